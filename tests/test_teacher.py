"""The video teacher: shapes, temporal reach, detection training path, state-dict round trip, clip checks."""

import pytest
import torch

from v2i_core.config import LossConfig, ModelConfig, MSIConfig
from v2i_core.models.build import build_detector
from v2i_core.models.criterion import build_criterion
from v2i_core.models.teacher import build_teacher

MODEL = ModelConfig(
    arch="deformable_detr", input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=2,
    dim_feedforward=64, num_queries=6, num_classes=2,
)
MSI_CFG = MSIConfig(frames=3, global_heads=4, identity_init=False)  # reference frames matter from the start


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher(MODEL, MSI_CFG)


def test_backbone_features_and_outputs_have_contract_shapes(teacher):
    clips = torch.randn(2, 3, 3, 64, 64)
    raw, enhanced = teacher.backbone_features(clips)
    assert teacher.detector.backbone.stages == [2, 3]
    assert [tuple(f.shape) for f in raw] == [(2, 3, 128, 8, 8), (2, 3, 256, 4, 4)]
    assert [tuple(f.shape) for f in enhanced] == [(2, 128, 8, 8), (2, 256, 4, 4)]
    out = teacher(clips)
    assert out["pred_logits"].shape == (2, 6, 2) and out["pred_boxes"].shape == (2, 6, 4)
    assert out["hs"].shape == (2, 6, 32) and len(out["aux_outputs"]) == 1


def test_current_frame_is_the_middle_one_and_reference_frames_matter(teacher):
    teacher.eval()
    torch.manual_seed(1)
    clips = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        result = teacher.run(clips)
        single = teacher.detector.backbone_features(clips[:, 1])
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(result.current_raw, single, strict=True))
        changed = clips.clone()
        changed[:, 0] = torch.randn(1, 3, 64, 64)  # another reference frame, same current frame
        other = teacher.run(changed)
    assert all(torch.equal(a, b) for a, b in zip(result.current_raw, other.current_raw, strict=True))
    assert not torch.allclose(result.outputs["hs"], other.outputs["hs"])
    assert not torch.allclose(result.enhanced[0], other.enhanced[0])


def test_a_fresh_teacher_detects_like_the_image_detector_of_its_seed():
    torch.manual_seed(0)
    teacher = build_teacher(MODEL, MSIConfig(frames=3, global_heads=4)).eval()
    torch.manual_seed(0)
    detector = build_detector(MODEL).eval()
    clips = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher(clips)["pred_boxes"], detector(clips[:, 1])["pred_boxes"], atol=1e-6)


def test_detection_loss_trains_backbone_msi_and_decoder(teacher):
    teacher.train()
    criterion = build_criterion(2, LossConfig())
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.2]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    teacher.zero_grad()
    loss = sum(criterion(teacher(torch.randn(2, 3, 3, 64, 64)), targets).values())
    loss.backward()
    for part in (teacher.msi.layers[0], teacher.msi.layers[1], teacher.detector.backbone, teacher.detector.transformer):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_state_dict_round_trips_through_build_teacher(teacher):
    state = teacher.state_dict()
    assert any(k.startswith("msi.") for k in state) and any(k.startswith("detector.") for k in state)
    torch.manual_seed(123)  # a differently initialised copy
    rebuilt = build_teacher(MODEL, MSI_CFG)
    rebuilt.load_state_dict(state)
    clips = torch.randn(1, 3, 3, 64, 64)
    teacher.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(teacher(clips)["pred_logits"], rebuilt(clips)["pred_logits"])


def test_clip_length_must_match(teacher):
    with pytest.raises(ValueError, match="clips"):
        teacher(torch.randn(1, 5, 3, 64, 64))
    with pytest.raises(ValueError, match="clips"):
        teacher(torch.randn(1, 3, 64, 64))
