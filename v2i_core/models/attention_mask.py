"""The decoder self-attention mask that keeps extra (cross-view) queries from influencing the model's own."""

from __future__ import annotations

import torch
from torch import Tensor


def extra_query_mask(num_queries: int, num_extra: int, device: torch.device) -> Tensor | None:
    """[Q+n, Q+n] bool, True = blocked: the first Q (own) queries may not attend to the last n (extra) ones;
    the extra queries attend to everything. None when there are no extra queries."""
    if num_extra == 0:
        return None
    total = num_queries + num_extra
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[:num_queries, num_queries:] = True
    return mask
