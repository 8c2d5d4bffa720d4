"""The research bench is a package of its own beside the library: v2i_core never imports it (nor holds a bench
module), the bench never imports the library's command line, and `v2i bench` reaches it through an entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imports import imported_names
from v2i_bench.cli import COMMANDS, main
from v2i_core import cli

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_of_the_library_imports_the_bench():
    files = sorted((ROOT / "v2i_core").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        assert not {name for name in imported_names(path) if name.split(".")[0] == "v2i_bench"}, path
        assert "v2i_bench" not in path.read_text(), path  # nor names it another way (importlib, an entry point)


# the bench's own modules; the library's extract.py, speed.py, cli.py and config.py are its own
RESEARCH = {"paper", "paper_data", "paper_tables", "parallel", "params", "fresh_draw", "share_estimators",
            "gpu_kernel_share"}  # fmt: skip


def test_the_library_holds_no_bench_module():
    assert not (ROOT / "v2i_core/bench").exists() and not (ROOT / "bench").exists()
    assert {path.stem for path in (ROOT / "v2i_bench").glob("*.py")} >= RESEARCH
    for path in (ROOT / "v2i_core").rglob("*.py"):
        assert path.stem not in RESEARCH and "bench" not in path.relative_to(ROOT).parts[:-1], path


def test_the_bench_never_imports_the_librarys_command_line():
    for path in sorted((ROOT / "v2i_bench").rglob("*.py")):
        assert "v2i_core.cli" not in imported_names(path), path


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """The bench's entry point as an install registers it (pyproject.toml), whatever this environment installed."""
    info = tmp_path / "v2i_bench_test-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: v2i-bench-test\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[{cli.PLUGIN_GROUP}]\nbench = v2i_bench.cli:add_parser\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_pyproject_registers_the_bench_command_under_the_group_the_cli_reads():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'[project.entry-points."{cli.PLUGIN_GROUP}"]\nbench = "v2i_bench.cli:add_parser"' in text
    assert 'v2i-bench = "v2i_bench.cli:main"' in text and '"v2i_bench*"' in text


def test_v2i_bench_dispatches_through_the_entry_point(registered, capsys):
    args = cli.build_parser().parse_args(["bench", "speed", "--size", "paper", "--set", "bench.seeds=[0]"])
    assert args.bench == "speed" and callable(args.handler) and args.overrides == ["bench.seeds=[0]"]
    assert cli.main(["bench", "params", "--params", ""]) == 0
    assert "Trainable parameters at ResNet-50" in capsys.readouterr().out
    assert cli.main(["bench", "paper", "--params", "", "--set", "bench.seeds=[0, 0]"]) == 1
    assert capsys.readouterr().err == "v2i: error: bench.seeds: [0, 0] repeats a seed\n"


def test_a_command_whose_package_is_gone_is_skipped_and_the_pipeline_verbs_still_work(tmp_path, monkeypatch, capsys):
    info = tmp_path / "gone-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gone\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[{cli.PLUGIN_GROUP}]\ngone = no_such_package.cli:add_parser\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = cli.build_parser().parse_args(["synth", "--out", "x"])
    assert args.verb == "synth"
    assert "v2i: warning: verb 'gone' (no_such_package.cli:add_parser) not loaded" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_bench_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: v2i-bench {command}") and "--params" in printed and "--set-file" in printed

