"""The package layering of docs/architecture.md, checked on the source: imports go one way."""

import ast
from pathlib import Path

import pytest

from helpers import ROOT

# Each package and the packages it may import (its own included).
ALLOWED = {
    "data": {"errors", "data"},
    "core": {"errors", "data", "core"},
    "training": {"errors", "data", "core", "training"},
    "inference": {"errors", "data", "core", "inference"},
}


def project_imports(path: Path) -> set[str]:
    """The `src.<package>` names a module imports, wherever the import statement sits."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "src"]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        names |= {m.split(".")[1] for m in modules if m.startswith("src.")}
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_go_one_way(package):
    wrong = {
        str(p.relative_to(ROOT)): sorted(project_imports(p) - ALLOWED[package])
        for p in sorted((ROOT / "src" / package).glob("*.py"))
    }
    assert not {k: v for k, v in wrong.items() if v}, f"imports against docs/architecture.md: {wrong}"


def test_the_checker_sees_a_wrong_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from src.training.engine import validate\nimport src.core.model\n")
    assert project_imports(module) == {"training", "core"}


def test_no_module_edits_sys_path():
    edits = [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py") if "sys.path" in p.read_text()]
    assert not edits, f"the project is installed (pip install -e .), so nothing needs sys.path: {edits}"


def test_every_error_class_shares_the_base():
    """Each exception class of the project derives from ProjectError, so every command reports it."""
    from src.errors import ProjectError

    classes = []
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            suffixes = ("Error", "Exists", "Unavailable", "Loss")
            if isinstance(node, ast.ClassDef) and node.name.endswith(suffixes):
                classes.append((path, node.name))
    assert len(classes) >= 14
    import importlib

    for path, name in classes:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        assert issubclass(getattr(importlib.import_module(module), name), ProjectError), (module, name)
