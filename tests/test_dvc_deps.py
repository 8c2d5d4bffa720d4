"""Every dvc.yaml stage declares, as deps, the v2i_core modules its verb runs: derived here from the imports of the
verb's handler (module-level and inside functions, followed transitively), so a change to any of them reruns the
stage and nothing the stage runs can change unseen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.imports import imported_names
from v2i_core.cli import HANDLERS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "v2i_core"


def module_file(name: str) -> Path | None:
    """The file of a v2i_core module or package name, or None for anything outside the project."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = ROOT / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """v2i_core module names imported anywhere in a file, `from pkg import mod` counted as `pkg.mod`; a module's
    parent packages are imported with it."""
    names = imported_names(path)
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return {n for n in names | parents if module_file(n) is not None}


def closure(start: set[str]) -> set[Path]:
    """The files of `start` and of everything they import, transitively."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)) - seen)
    return {module_file(n).relative_to(ROOT) for n in seen}


def stage_verb(cmd: str) -> str:
    match = re.search(r"(?:^v2i|-m v2i_core\.cli) (\w+)", cmd)
    assert match, f"stage command does not run a v2i verb: {cmd}"
    return match.group(1)


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_modules_its_verb_imports(stage):
    spec = STAGES[stage]
    handler_module = HANDLERS[stage_verb(spec["cmd"])].partition(":")[0]
    needed = closure({"v2i_core.cli", handler_module})
    missing = sorted(str(p) for p in needed if not covered(p, spec["deps"]))
    assert not missing, f"dvc.yaml stage {stage}: deps miss {missing}"


def test_the_closure_follows_imports_inside_functions():
    # registry imports serving only inside register(): it must still be found
    files = closure({"v2i_core.registry"})
    assert Path("v2i_core/serving.py") in files
    assert Path("v2i_core/engine/model_dir.py") in files
