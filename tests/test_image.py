"""The project image: its build context, computed with Docker's own .dockerignore rules (the `docker` package's
build helpers), holds every file the Dockerfile copies, and the image installs what `make setup` installs. No Docker
engine runs here, so this is what CI can prove without building."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[list[str]]:
    """The Dockerfile's instructions as word lists, continuation lines joined and comments left out."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def build_context() -> set[str]:
    """Every path `docker build .` sends to the daemon, as Docker computes it from .dockerignore."""
    rules = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [rule.strip() for rule in rules if rule.strip() and not rule.lstrip().startswith("#")]
    return set(exclude_paths(str(ROOT), patterns, dockerfile="Dockerfile"))


def copied_sources() -> list[str]:
    sources = []
    for words in dockerfile_instructions():
        if words[0] in ("COPY", "ADD") and not any(word.startswith("--from") for word in words):
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def test_every_copied_source_is_in_the_build_context_with_its_files():
    context = build_context()
    sources = copied_sources()
    assert {"v2i_core", "v2i_bench", "configs", "pyproject.toml"} <= {source.rstrip("/") for source in sources}
    for source in sources:
        source = source.rstrip("/")
        assert source in context, f"COPY {source}: not in the build context (.dockerignore)"
        if (ROOT / source).is_dir():  # the package's modules came along, not just the folder
            files = [p for p in (ROOT / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            tracked = {str(p.relative_to(ROOT)) for p in files}
            assert tracked and tracked <= context, source


def test_the_context_holds_nothing_the_image_does_not_copy():
    # no local data, models, MLflow stores, virtualenvs or credentials (.env, .dvc/config.local) reach the daemon
    copied = {source.rstrip("/") for source in copied_sources()}
    for path in build_context():
        top = path.split("/")[0]
        assert top in copied or path in {"Dockerfile", ".dockerignore"}, path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path


def pip_installs(lines: list[list[str]]) -> list[tuple[frozenset, frozenset, bool]]:
    """Each `pip install` as (requirement files, constraint files, whether it installs the project itself)."""
    found = []
    for words in lines:
        if "install" not in words or not any(word.endswith("pip") for word in words):
            continue
        words = words[words.index("install") + 1 :]
        reqs = frozenset(words[i + 1] for i, w in enumerate(words) if w == "-r")
        cons = frozenset(words[i + 1] for i, w in enumerate(words) if w == "-c")
        found.append((reqs, cons, "-e" in words and "--no-deps" in words))
    return found


def test_the_image_installs_what_make_setup_installs_but_the_test_tools():
    makefile = (ROOT / "Makefile").read_text()
    pip_install = re.search(r"^PIP_INSTALL := (.*)$", makefile, re.M).group(1)
    lines = [line.replace("$(PIP_INSTALL)", pip_install).replace("$(BIN)/", "") for line in makefile.splitlines()]
    recipe = [shlex.split(line) for line in lines if line.startswith("\t") and "pip install" in line]
    image = [words for words in dockerfile_instructions() if words[0] == "RUN"]
    setup, built = pip_installs(recipe), pip_installs(image)
    setup = [(reqs - {"requirements-dev.txt"}, cons, project) for reqs, cons, project in setup if reqs or project]
    assert setup == built and len(built) == 2
    assert built[0] == (frozenset({"requirements.txt"}), frozenset({"constraints.txt"}), False)
    assert built[1][2]  # the project itself, --no-deps: every dependency came pinned from the line above
