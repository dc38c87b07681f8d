"""Every command reports every error class of the project as one `error:` line and a non-zero exit.

Each command's first real step is replaced by one that raises; what is checked is the command's own
`main`, through the one handler of src/errors.py (and train.py's report of what was kept)."""

import ast
import importlib

import pytest

from src.errors import ProjectError

from helpers import ROOT

# command module -> (the function its main calls first that can fail, arguments)
COMMANDS = {
    "src.data.check": ("load_labeled_images", []),
    "src.data.dedup": ("find_duplicates", ["--out", "{tmp}"]),
    "src.data.demo": ("make_demo_dataset", ["--out", "{tmp}"]),
    "src.data.prepare": ("prepare_cache", ["--out", "{tmp}"]),
    "src.training.train": ("fit", ["--CHECKPOINT_DIR={tmp}"]),
    "src.training.evaluate": ("evaluate_checkpoint", ["--checkpoint", "{tmp}/x.pth"]),
    "src.training.oof": ("train_fold", ["--out", "{tmp}"]),
    "src.training.context": ("run_context", ["--metadata", "{tmp}/m.csv", "--out", "{tmp}"]),
    "src.inference.predict": ("load_scorer", ["--checkpoint", "{tmp}/x.pth", "{tmp}"]),
    "src.inference.export": ("export", ["--checkpoint", "{tmp}/x.pth"]),
}


def error_classes() -> list[type]:
    found = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                cls = getattr(importlib.import_module(module), node.name)
                if isinstance(cls, type) and issubclass(cls, ProjectError):
                    found.append(cls)
    return found + [OSError]


ERRORS = error_classes()


def test_the_list_of_error_classes_is_complete():
    names = {c.__name__ for c in ERRORS}
    assert {"DataError", "CheckpointError", "ContextError", "ConfigError", "ExportError", "OSError"} <= names
    assert len(names) >= 15


@pytest.mark.parametrize("error", ERRORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_one_error_line_and_a_nonzero_exit(command, error, monkeypatch, tmp_path, capsys):
    module = importlib.import_module(command)
    target, argv = COMMANDS[command]
    two_lines = "it broke\nhere"
    raised = error(2, "No such file or directory", "missing.csv") if error is OSError else error(two_lines)

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(module, target, fail)
    rc = module.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
