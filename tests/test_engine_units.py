"""The engine's pieces without a training run: one epoch on a toy task, and what the engine may import."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.imports import imported_names
from v2i_core.engine.train import train_one_epoch
from v2i_core.errors import V2IError

ENGINE = Path(__file__).resolve().parents[1] / "v2i_core" / "engine"


class ToyTask(nn.Module):
    """forward(inputs, targets) -> loss terms, as the engine's tasks; one weight to watch."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([2.0]))

    def forward(self, inputs: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        # inputs: [B, 1]
        fit = (self.w * inputs - torch.stack([t["y"] for t in targets])).pow(2).mean()
        return {"loss_fit": fit, "loss_fit0": 0.5 * fit}  # a per-layer aux term: in "loss" only


def _batches(n: int, value: float = 1.0) -> list[tuple[torch.Tensor, list[dict]]]:
    return [(torch.full((2, 1), value), [{"y": torch.tensor([1.0])}] * 2) for _ in range(n)]


def test_one_epoch_steps_every_batch_and_returns_the_mean_terms():
    task = ToyTask()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    means, stopped = train_one_epoch(task, _batches(3), optimizer, torch.device("cpu"), 0)
    assert not stopped and set(means) == {"loss", "loss_fit"}
    # the loss is 1.5 (w - 1)^2 (the aux term adds half), its gradient 3 (w - 1): w goes 2 -> 1.7 -> 1.49 -> 1.343
    fits = [(w - 1) ** 2 for w in (2.0, 1.7, 1.49)]
    assert means["loss_fit"] == pytest.approx(sum(fits) / 3, rel=1e-5)
    assert means["loss"] == pytest.approx(1.5 * sum(fits) / 3, rel=1e-5)
    assert task.w.item() == pytest.approx(1.343, rel=1e-5)


def test_one_epoch_clips_stops_at_its_deadline_and_refuses_a_non_finite_loss():
    task = ToyTask()
    optimizer = torch.optim.SGD(task.parameters(), lr=1.0)
    _, stopped = train_one_epoch(
        task, _batches(3), optimizer, torch.device("cpu"), 0, clip_max_norm=0.1, deadline=time.monotonic() - 1
    )
    assert stopped and task.w.item() == pytest.approx(1.9)  # one step, its gradient clipped to 0.1
    with pytest.raises(V2IError, match=r"loss is not finite \(nan\) at epoch 3, step 1: stopped; no checkpoint yet"):
        train_one_epoch(task, _batches(1, float("nan")), optimizer, torch.device("cpu"), 2)
    assert task.w.item() == pytest.approx(1.9)  # the bad step never reached the weight


def test_the_engine_never_imports_eval():
    # training sits below evaluation: the verbs hand fit its per-epoch scorer (v2i_core/training.py)
    modules = sorted(ENGINE.glob("*.py"))
    assert modules
    for path in modules:
        upward = sorted(n for n in imported_names(path) if n == "v2i_core.eval" or n.startswith("v2i_core.eval."))
        assert not upward, f"{path.name} imports {upward}"
        relative = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 1]
        assert not relative, f"{path.name}: a relative import reaching above v2i_core/engine"
