"""params.yaml as typed config, and the `v2i` command's verbs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from v2i_core import cli
from v2i_core.cli import HANDLERS, Terminated, main
from v2i_core.config import load_params
from v2i_core.errors import V2IError


def test_defaults_without_a_params_file(tmp_path):
    params = load_params(tmp_path / "absent.yaml")
    assert params.baseline.model.arch == "deformable_detr" and params.teacher.msi.frames == 3
    # the recipe: a quarter of the paper's lambda_bk, its lambda_qe, the clean teacher view, fixed epochs
    assert (params.distill.tfd.weight, params.distill.cqd.weight) == (0.25, 5.0)
    assert params.distill.teacher_view == "clean" and params.distill.train.augment.hard_frames == 0.3
    assert all(getattr(params, s).train.max_minutes is None for s in ("baseline", "teacher", "distill"))


def test_the_committed_params_spell_out_the_defaults_and_set_no_wall_clock_budget():
    from pathlib import Path

    import yaml

    from v2i_core.config import Params

    path = Path(__file__).resolve().parents[1] / "params.yaml"
    committed, defaults = load_params(path), Params()
    for section in ("synth", "baseline", "teacher", "distill"):
        assert getattr(committed, section) == getattr(defaults, section), section
    assert "max_minutes" not in yaml.safe_dump(yaml.safe_load(path.read_text()))  # comments may name the knob


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("synth:\n  flavor: colonoscopy\n", "synth.flavor"),
        ("baseline:\n  model:\n    dmodel: 64\n", "baseline.model.dmodel"),
        ("trian:\n  epochs: 3\n", "trian"),
    ],
)
def test_unknown_keys_are_named(tmp_path, text, key):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(V2IError, match=rf"^{path}: unknown key '{key}'$"):
        load_params(path)


def test_bad_values_name_their_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("eval:\n  score_threshold: 1.5\n")
    with pytest.raises(V2IError, match="'eval.score_threshold'"):
        load_params(path)
    path.write_text("synth: [1, 2\n")
    with pytest.raises(V2IError, match="not valid YAML"):
        load_params(path)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    params = load_params(None, ["baseline.train.epochs=3", "baseline.model.input_size=[64, 96]", "eval.protocol=iou"])
    assert params.baseline.train.epochs == 3 and params.baseline.model.input_size == (64, 96)
    assert params.eval.protocol == "iou"
    with pytest.raises(V2IError, match="expected KEY=VALUE"):
        load_params(None, ["baseline.train.epochs"])
    with pytest.raises(V2IError, match="unknown key 'baseline.train.epoch'"):
        load_params(None, ["baseline.train.epoch=3"])


def test_set_files_merge_over_the_params_key_by_key_and_overrides_come_last(tmp_path):
    base = tmp_path / "params.yaml"
    base.write_text("baseline:\n  train: {epochs: 12, lr: 1.0e-4}\n  model: {input_size: [64, 96]}\n")
    extra = tmp_path / "more.yaml"
    extra.write_text("baseline:\n  train: {epochs: 6}\n  model: {input_size: [32, 48]}\n")
    params = load_params(base, ["baseline.train.epochs=3"], [extra])
    assert params.baseline.train.lr == 1.0e-4  # kept: the set file names only epochs
    assert params.baseline.train.epochs == 3 and params.baseline.model.input_size == (32, 48)
    assert load_params(base, [], [extra]).baseline.train.epochs == 6
    extra.write_text("baseline:\n  train: {epoch: 6}\n")
    with pytest.raises(V2IError, match=rf"^{base} \+ {extra}: unknown key 'baseline.train.epoch'$"):
        load_params(base, [], [extra])
    with pytest.raises(V2IError, match=rf"^{tmp_path / 'absent.yaml'}: no such params file$"):
        load_params(base, [], [tmp_path / "absent.yaml"])
    extra.write_text("- epochs\n")
    with pytest.raises(V2IError, match="expected a mapping"):
        load_params(base, [], [extra])


def test_a_config_error_is_one_line_and_exit_1(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text("register:\n  nmae: x\n")
    assert main(["promote", "--params", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"v2i: error: {path}: unknown key 'register.nmae'"


@pytest.mark.parametrize(
    ("stop", "code", "line"), [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated")]
)
def test_a_stop_while_the_command_line_is_read_is_one_line_too(monkeypatch, capsys, stop, code, line):
    """Ctrl-C or SIGTERM before the command runs (parsing its arguments, importing what it needs): no traceback."""

    def stopped():
        raise stop

    monkeypatch.setattr(cli, "build_parser", stopped)
    assert main(["promote"]) == code
    assert capsys.readouterr().err == f"v2i: {line}\n"


@pytest.mark.parametrize("verb", sorted(HANDLERS))
def test_every_verb_has_help(verb):
    result = subprocess.run(
        [sys.executable, "-m", "v2i_core.cli", *verb.split(), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: v2i {verb}")
    assert "--params" in result.stdout


def test_the_gpu_paper_params_file_sets_the_papers_size_in_every_stage_section():
    path = Path(__file__).parents[1] / "configs/gpu-paper.yaml"
    params = load_params(None, [], [path])
    sections = {"baseline": params.baseline, "teacher": params.teacher, "distill": params.distill}
    for section in sections.values():
        m, t = section.model, section.train
        assert (m.backbone, m.backbone_norm) == ("resnet50", "frozen_bn")
        assert m.pretrained == "ResNet50_Weights.IMAGENET1K_V1"
        assert (m.last_layer, m.num_feature_levels) == (4, 4)
        assert (tuple(m.input_size), m.d_model, m.enc_layers, m.dec_layers) == ((320, 400), 256, 6, 6)
        assert (m.dim_feedforward, m.dropout, m.num_queries) == (1024, 0.1, 100)
        assert (t.epochs, t.batch_size, t.lr, t.lr_backbone, t.num_workers) == (12, 16, 1e-4, 1e-5, 8)
        assert t.max_minutes is None
    assert params.teacher.msi.frames == 3
    # merged over the project's params, it leaves what it does not name (the recipe) as params.yaml sets it
    project = Path(__file__).parents[1] / "params.yaml"
    merged, base = load_params(project, [], [path]), load_params(project)
    assert merged.distill.tfd == base.distill.tfd and merged.synth == base.synth
