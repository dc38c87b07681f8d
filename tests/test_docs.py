"""Every command shown in README.md and docs/ exists and answers --help, so the documentation cannot rot."""

import re

import pytest

from helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_scripts() -> list[str]:
    """The project scripts named in `python <script>` commands of the docs (benchmarks included)."""
    found = set()
    for doc in DOCS:
        found |= set(re.findall(r"python3? ((?:src|benchmarks)/[\w/]+\.py)", doc.read_text()))
    return sorted(found)


def test_the_docs_name_the_commands_a_user_needs():
    scripts = documented_scripts()
    for script in (
        "src/training/train.py",
        "src/data/check.py",
        "src/data/prepare.py",
        "src/training/evaluate.py",
        "src/inference/predict.py",
        "src/inference/serve.py",
        "src/inference/export.py",
    ):
        assert script in scripts
    for script in scripts:
        assert (ROOT / script).is_file(), f"{script} is documented but does not exist"


@pytest.mark.parametrize("script", documented_scripts())
def test_every_documented_command_answers_help(script, monkeypatch, capsys):
    # Run as `python <script> --help` would, in this process: the imports are shared, so the whole
    # list costs seconds instead of a torch import per command.
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", [str(ROOT / script), "--help"])
    monkeypatch.syspath_prepend(str((ROOT / script).parent))  # as Python does for a script
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code in (0, None)
    assert "usage" in out.lower() or "Settings (override as --NAME=value)" in out


def test_readme_stays_short_and_links_only_existing_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md|LICENSE)\)", readme):
        assert (ROOT / link).is_file(), link
