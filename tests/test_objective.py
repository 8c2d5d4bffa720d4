"""The distillation objective: loss terms and switches, frozen teacher, student identical to a baseline."""

import pytest
import torch

from v2i_core.config import CQDConfig, DistillConfig, LossConfig, ModelConfig, MSIConfig, TFDConfig
from v2i_core.distill.cqd import score_consistency
from v2i_core.distill.objective import (
    DistillationTask,
    student_view,
    with_own_boxes,
)
from v2i_core.distill.tfd import TFDLoss
from v2i_core.errors import V2IError
from v2i_core.models.build import build_detector
from v2i_core.models.criterion import build_criterion
from v2i_core.models.teacher import build_teacher

MODEL = ModelConfig(
    arch="deformable_detr", input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=2,
    dim_feedforward=64, num_queries=6, num_classes=2,
)
MSI_CFG = MSIConfig(frames=3, global_heads=4, identity_init=False)  # MSI carries the other frames, as after training
TARGETS = [
    {"boxes": torch.tensor([[0.4, 0.5, 0.3, 0.4]]), "labels": torch.tensor([1])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def _cfg(model=MODEL, use_msi=True, tfd=True, mask="gaussian", cqd=True, mode="sq", w_bk=1.0, w_qe=5.0):
    # the paper's distillation: no soft scores, the degraded view, TFD on the ground truth alone
    return DistillConfig(
        model=model, use_msi=use_msi, tfd=TFDConfig(enabled=tfd, mask=mask, weight=w_bk, own_boxes=None),
        cqd=CQDConfig(enabled=cqd, mode=mode, weight=w_qe), score_weight=None, teacher_view="degraded",
    )


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher(MODEL, MSI_CFG)


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(1)
    return torch.randn(2, 3, 3, 64, 64)


def _task(teacher, cfg=None, seed=2):
    torch.manual_seed(seed)
    cfg = cfg or _cfg()
    return DistillationTask(build_detector(cfg.model), teacher, build_criterion(2, LossConfig()), cfg)


def test_terms_are_detection_on_current_frame_plus_weighted_distillation(teacher, clips):
    task = _task(teacher).train()
    torch.manual_seed(3)
    terms = task(clips, TARGETS)
    reference = task.criterion(task.model(clips[:, 1]), TARGETS)  # the student alone on the current frame
    assert set(terms) == set(reference) | {"loss_bk", "loss_qe"}
    for key, value in reference.items():  # cross-view queries never reach the detection terms
        assert torch.allclose(terms[key], value, atol=1e-5), key
    assert terms["loss_bk"] > 0 and 0 < terms["loss_qe"] <= 5.0 * 2
    heavier_task = _task(teacher, _cfg(w_bk=3.0, w_qe=1.0)).train()  # same seed: same student
    torch.manual_seed(3)  # same cross-view draw
    heavier = heavier_task(clips, TARGETS)
    assert heavier["loss_bk"].item() == pytest.approx(3 * terms["loss_bk"].item(), rel=1e-4)
    assert heavier["loss_qe"].item() == pytest.approx(terms["loss_qe"].item() / 5, rel=1e-4)


def test_a_student_frame_apart_replaces_the_clips_current_frame_for_the_student_only(teacher, clips):
    task = _task(teacher).train()
    apart = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(4))
    targets = [{**TARGETS[0], "student_frame": apart}, TARGETS[1]]
    assert torch.equal(student_view(clips[:, 1], TARGETS), clips[:, 1])
    assert torch.equal(student_view(clips[:, 1], targets), torch.stack([apart, clips[1, 1]]))
    torch.manual_seed(3)
    terms = task(clips, targets)
    reference = task.criterion(task.model(torch.stack([apart, clips[1, 1]])), TARGETS)
    for key, value in reference.items():
        assert torch.allclose(terms[key], value, atol=1e-5), key
    torch.manual_seed(3)
    same_clip = task(clips, TARGETS)  # the teacher's targets come from the clip either way
    assert not torch.allclose(terms["loss_bk"], same_clip["loss_bk"])


def test_switches_remove_terms_and_heads(teacher, clips):
    task = _task(teacher, _cfg(tfd=False, cqd=False))
    assert task.tfd is None and task.cqd is None
    assert not {"loss_bk", "loss_qe"} & set(task(clips, TARGETS))
    only_tfd = _task(teacher, _cfg(cqd=False))(clips, TARGETS)
    assert "loss_bk" in only_tfd and "loss_qe" not in only_tfd


def test_use_msi_chooses_the_enhanced_or_the_raw_teacher_feature(teacher, clips):
    with torch.no_grad():
        taught = teacher.run(clips)
    targets = {True: taught.enhanced[-1], False: taught.current_raw[-1]}
    values = {}
    for use_msi, target in targets.items():
        task = _task(teacher, _cfg(use_msi=use_msi, cqd=False)).eval()
        with torch.no_grad():
            values[use_msi] = task(clips, TARGETS)["loss_bk"].item()
            student = task.model.backbone_features(clips[:, 1])[-1]
            expected = TFDLoss(256, 256, "gaussian")(student, target, TARGETS).item()
        assert values[use_msi] == pytest.approx(expected, rel=1e-5)
    assert values[True] != pytest.approx(values[False])


def test_cross_view_selection_follows_the_global_seed(teacher, clips):
    task = _task(teacher, _cfg(tfd=False)).eval()
    with torch.no_grad():
        torch.manual_seed(7)
        a = task(clips, TARGETS)["loss_qe"]
        torch.manual_seed(7)
        b = task(clips, TARGETS)["loss_qe"]
        draws = {round(task(clips, TARGETS)["loss_qe"].item(), 6) for _ in range(6)}
    assert torch.equal(a, b) and len(draws) > 1


def test_teacher_is_frozen_hidden_and_unchanged_by_training(teacher, clips):
    small_detr = MODEL.model_copy(update={"arch": "detr", "d_model": 16})  # every projection head is in play
    task = _task(teacher, _cfg(model=small_detr))
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in task.parameters()}
    assert not any(k.startswith("teacher") for k in task.state_dict())
    assert all(not p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # weights and BN statistics
    trained_before = {k: v.clone() for k, v in task.state_dict().items()}  # student and heads
    optimizer = torch.optim.AdamW(task.trainable_parameters(), lr=1e-3)
    task.train()
    assert task.model.training and not teacher.training
    for _ in range(2):
        loss = sum(task(clips, TARGETS).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    changed = {k.split(".")[0] for k, v in trained_before.items() if not torch.equal(v, task.state_dict()[k])}
    assert {"model", "cqd"} <= changed


def test_student_state_dict_matches_a_baseline_and_heads_live_in_the_task(teacher):
    detr = MODEL.model_copy(update={"arch": "detr", "num_feature_levels": 1})
    task = _task(teacher, _cfg(model=detr))  # DETR student: query and decoder widths differ from the teacher's
    baseline = build_detector(detr)
    assert list(task.model.state_dict()) == list(baseline.state_dict())
    assert type(task.model) is type(baseline)
    heads = [k for k in task.state_dict() if not k.startswith(("model.", "criterion."))]
    assert heads and all(k.startswith(("tfd.", "cqd.")) for k in heads)
    assert task.cqd.query_proj.in_features == 64 and task.cqd.query_proj.out_features == 32


def test_dtype_moves_reach_the_hidden_teacher(clips):
    torch.manual_seed(0)
    teacher = build_teacher(MODEL, MSI_CFG)
    task = _task(teacher).double()
    assert next(teacher.parameters()).dtype == torch.float64
    assert next(task.model.parameters()).dtype == torch.float64


def test_config_mismatches_are_errors(teacher, clips):
    with pytest.raises(V2IError, match="stride"):
        _task(teacher, _cfg(model=MODEL.model_copy(update={"last_layer": 4})))
    with pytest.raises(V2IError, match="cross-view"):
        DistillationTask(
            build_detector(MODEL), build_teacher(MODEL.model_copy(update={"num_queries": 2}), MSI_CFG),
            build_criterion(2, LossConfig()), _cfg(),
        )
    with pytest.raises(ValueError, match="clips"):
        _task(teacher)(clips[:, :2], TARGETS)


def test_score_term_pulls_the_cross_view_scores_towards_the_teachers(teacher, clips):
    cfg = _cfg().model_copy(update={"score_weight": 2.0})
    task = _task(teacher, cfg).train()
    torch.manual_seed(3)
    terms = task(clips, TARGETS)
    plain = _task(teacher).train()  # same seed: same student, and the same cross-view draw below
    torch.manual_seed(3)
    assert set(terms) == set(plain(clips, TARGETS)) | {"loss_sc"}
    assert terms["loss_sc"] > 0
    # zero where the student's scores on the queries are the teacher's, growing as they part
    logits = torch.tensor([[[2.0, -3.0]]])
    assert score_consistency(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    near, far = score_consistency(logits - 0.5, logits), score_consistency(logits - 3.0, logits)
    assert 0 < near < far
    with pytest.raises(V2IError, match="score_weight.*cqd"):
        _task(teacher, _cfg(cqd=False).model_copy(update={"score_weight": 2.0}))


def test_own_boxes_add_the_students_confident_detections_to_the_tfd_mask():
    outputs = {
        "pred_logits": torch.tensor([[[3.0], [-3.0]], [[0.0], [3.0]]]),  # sigmoid 0.95, 0.05 / 0.5, 0.95
        "pred_boxes": torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]], [[0.5] * 4, [0.7, 0.3, 0.2, 0.2]]]),
    }
    guided = with_own_boxes(TARGETS, outputs, 0.6)
    assert torch.equal(guided[0]["boxes"], torch.tensor([[0.4, 0.5, 0.3, 0.4], [0.2, 0.2, 0.1, 0.1]]))
    assert torch.equal(guided[1]["boxes"], torch.tensor([[0.7, 0.3, 0.2, 0.2]]))  # an empty frame gets the box too
    assert torch.equal(guided[0]["labels"], TARGETS[0]["labels"]) and len(TARGETS[0]["boxes"]) == 1  # a copy


def test_own_boxes_reach_tfd_only(teacher, clips):
    plain, own = _cfg(), _cfg()
    own.tfd.own_boxes = 0.01  # every query of an untrained student: its mask covers far more than the lesion
    terms = {}
    for name, cfg in (("plain", plain), ("own", own)):
        torch.manual_seed(3)
        terms[name] = _task(teacher, cfg).train()(clips, TARGETS)
    assert not torch.allclose(terms["own"]["loss_bk"], terms["plain"]["loss_bk"])
    for key in terms["plain"].keys() - {"loss_bk"}:
        assert torch.equal(terms["own"][key], terms["plain"][key]), key


def test_a_teacher_and_settings_the_student_cannot_be_distilled_with_are_refused(tmp_path):
    from v2i_core.config import AugmentConfig
    from v2i_core.distill.checks import check_distillation
    from v2i_core.engine.model_dir import ModelSpec

    polyp = [{"id": 1, "name": "polyp"}]
    teacher = ModelSpec("teacher", MODEL, polyp, MSI_CFG)
    plain, hard = AugmentConfig(hard_frames=0.0), AugmentConfig(hard_frames=0.3)
    size, clean = (64, 64), DistillConfig(model=MODEL, teacher_view="clean")

    def check(cfg=clean, augment=hard, spec=teacher, categories=polyp, input_size=size):
        check_distillation(cfg, augment, input_size, categories, tmp_path / "frames", spec, tmp_path / "t")

    check()
    with pytest.raises(V2IError, match=r"t: role is 'baseline', expected a teacher"):
        check(spec=ModelSpec("baseline", MODEL, polyp))
    with pytest.raises(V2IError, match=r"t: teacher classes differ from those of .*frames"):
        check(categories=[{"id": 1, "name": "adenoma"}])
    with pytest.raises(V2IError, match="teacher input_size differs from distill.model.input_size"):
        check(input_size=(64, 80))
    with pytest.raises(V2IError, match=r"teacher_view 'clean' needs distill.train.augment.hard_frames > 0"):
        check(augment=plain)
    check(cfg=DistillConfig(model=MODEL, teacher_view="degraded"), augment=plain)  # the paper's view needs none
