"""Held-out evaluation: mean bits per dimension of a dataset, overall and per level, as a pure function.

The dequantisation noise is drawn from ``seed``, so repeated evaluations of one model are comparable; under
``torchrun`` each process scores its share and the sums are averaged.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from flowplug.data import ImageData, dequantize
from flowplug.metrics import bits_per_dim, level_bits_per_dim
from flowplug.models.base import FlowModel
from flowplug.train import distributed

__all__ = ["count_nfe", "evaluate", "evaluation_inputs"]


def count_nfe(model: nn.Module) -> int | None:
    """Sum of ``last_nfe`` over the model's modules (CNF function evaluations), None if none."""
    counts = [m.last_nfe for m in model.modules() if getattr(m, "last_nfe", None) is not None]
    return int(sum(counts)) if counts else None


def evaluation_inputs(data: ImageData, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dequantised images ``v`` every evaluation of ``data`` with ``seed`` scores (the same noise each time)."""
    return dequantize(data.x, data.n_bins, generator=torch.Generator().manual_seed(seed + 2**31), dtype=dtype)


@torch.no_grad()
def evaluate(
    model: FlowModel,
    data: ImageData,
    *,
    seed: int = 0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, Any]:
    """Mean BPD of ``model`` (in eval mode) over all of ``data``: ``bpd``, ``per_level_bpd``, ``num_images``.

    ``per_level_bpd[s]`` is level ``s``'s share ``-E[log p_s] / (D ln 2)``; their sum plus ``log2(n_bins)`` is
    ``bpd``. ``nfe`` (CNF models) is the mean function evaluations per batch. ``autocast`` is the precision
    context to score in (default none).
    """
    device = torch.device(device)
    model.eval()
    mine = evaluation_inputs(data, seed, dtype)[distributed.rank()::distributed.world_size()]
    sums, nfes = None, []
    with torch.random.fork_rng(devices=[]), autocast or contextlib.nullcontext():
        torch.manual_seed(seed)
        for batch in mine.split(batch_size):
            levels = model.level_log_probs(batch.to(device))
            batch_sums = torch.stack([lp.double().sum() for lp in levels])
            sums = batch_sums if sums is None else sums + batch_sums
            nfe = count_nfe(model)
            if nfe is not None:
                nfes.append(nfe)
    count = torch.tensor(float(mine.shape[0]), dtype=torch.float64, device=device)
    totals = distributed.all_reduce_mean(torch.cat([sums, count.view(1)]))
    mean_terms = list(totals[:-1] / totals[-1])
    dims = math.prod(data.image_shape)
    result: dict[str, Any] = {
        "bpd": float(bits_per_dim(mean_terms, dims, data.n_bins)),
        "per_level_bpd": [float(b) for b in level_bits_per_dim(mean_terms, dims)],
        "num_images": len(data),
    }
    if nfes:
        result["nfe"] = sum(nfes) / len(nfes)
    return result
