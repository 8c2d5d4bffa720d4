"""Cross-view Query Distillation (CQD, paper II-D, Eqs. 4-5).

Each step, n of the teacher's N object queries are drawn at random (Phi of the paper) and appended, as
cross-view queries q_t, to the student's own queries in the student decoder (Eq. 4):

    D_hat_s, D_s = Decoder_s([q_t, Q_s], E_s)

The detector's decoder masks its self-attention so its own queries never attend to the extra ones, and its
heads and outputs cover its own queries only, so the cross-view queries reach neither the student's detection
loss nor its inference path. The decoded cross-view queries D_hat_s are pulled towards the teacher's decoding D_t
of the very same queries (Eq. 5) by cosine consistency.

Choices where the paper is silent or the setting differs:
- The teacher here decodes one query set, from the MSI-enhanced current frame (its reference frames reach it
  through MSI, not through per-frame queries), so D_t is the teacher's decoded current-frame query (its `hs`).
- n by `mode` (Table IV): "sq" n = floor(N/T) (~ the student's query count, the paper's choice), "half"
  n = floor(T * floor(N/T) / 2), "all" n = T * floor(N/T) (~ every teacher query).
- One draw per step, shared by the batch, from torch's global RNG (seeded runs repeat and resume exactly).
- The loss is 1 - cos, averaged over queries and images: Eq. 5's -cos shifted by a constant, so the same
  gradient, but 0 at perfect agreement so the logged term reads as a distance.
- Where the teacher's query embedding width differs from the student's (e.g. a DETR student under a Deformable
  DETR teacher), a learned linear map brings the selected queries into the student's query space; where the
  decoder widths (d_model) differ, another maps the student's decoded cross-view queries into the teacher's.
  Both live here, in the objective, never in the student. A SAM-DETR student's queries are reference boxes (4
  logits of cx, cy, w, h), so for it the first map turns each selected teacher query into a reference box, which
  its decoder then aligns with the features inside, as it does its own.
- Soft scores (distill.score_weight, not in the paper): the student's class head on its decoded cross-view
  queries is pulled towards the teacher's class scores on the same queries, by the KL divergence of the two
  sigmoid (per-class Bernoulli) scores: the teacher's doubt about a frame reaches the student as a score, not as a
  hard label.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from v2i_core.errors import V2IError

CountMode = Literal["sq", "half", "all"]


def cross_view_count(num_queries: int, frames: int, mode: CountMode) -> int:
    """n, the number of cross-view queries for N teacher queries, T frames and the Table IV count mode."""
    per_frame = num_queries // frames  # sq = floor(N / T)
    return {"sq": per_frame, "half": frames * per_frame // 2, "all": frames * per_frame}[mode]


def select_queries(num_queries: int, n: int, device: torch.device) -> Tensor:
    """Phi(N): n distinct query indices [n], drawn from torch's global RNG."""
    return torch.randperm(num_queries)[:n].to(device)


def query_consistency(student_hs: Tensor, teacher_hs: Tensor) -> Tensor:
    """Eq. 5 as 1 - cos: [B, n, d] x [B, n, d] -> scalar mean over images and queries."""
    per_image = (1 - F.cosine_similarity(student_hs.float(), teacher_hs.float(), dim=-1)).mean(dim=1)  # [B]
    return per_image.mean()


def score_consistency(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) of per-class sigmoid scores: [B, n, C] x [B, n, C] class logits of the same cross-view
    queries -> scalar mean over images, queries and classes; 0 at agreement. Binary cross-entropy to the teacher's
    scores minus the teacher's own entropy: the same gradient."""
    target = teacher_logits.detach().float().sigmoid()
    student = F.binary_cross_entropy_with_logits(student_logits.float(), target, reduction="none")
    floor = F.binary_cross_entropy_with_logits(teacher_logits.detach().float(), target, reduction="none")
    return (student - floor).flatten(1).mean(dim=1).mean()


def _map(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)


class CQDLoss(nn.Module):
    """Draws the cross-view queries and scores the student's decoding of them against the teacher's."""

    def __init__(
        self,
        teacher_queries: int,
        frames: int,
        mode: CountMode,
        query_dims: tuple[int, int],
        decoder_dims: tuple[int, int],
    ):
        """query_dims: (teacher, student) query embedding widths; decoder_dims: (student, teacher) d_model."""
        super().__init__()
        self.num_queries = teacher_queries
        self.count = cross_view_count(teacher_queries, frames, mode)
        if self.count == 0:
            raise V2IError(
                f"params: distill.cqd.mode '{mode}' gives no cross-view query: "
                f"the teacher has {teacher_queries} queries for {frames} frames"
            )
        self.query_proj = _map(*query_dims)
        self.hs_proj = _map(*decoder_dims)

    def sample(self, teacher_query_embed: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """teacher query embedding [N, q_t] -> (indices [n], cross-view queries [B, n, q_s] for the student)."""
        idx = select_queries(self.num_queries, self.count, teacher_query_embed.device)
        queries = self.query_proj(teacher_query_embed.detach()[idx])  # [n, q_s]
        return idx, queries.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, extra_hs: Tensor, teacher_hs: Tensor, idx: Tensor) -> Tensor:
        # extra_hs: [B, n, d_s] student-decoded cross-view queries; teacher_hs: [B, N, d_t]; idx: [n] -> scalar
        return query_consistency(self.hs_proj(extra_hs), teacher_hs.detach()[:, idx])
