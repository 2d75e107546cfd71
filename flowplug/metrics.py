"""Bits per dimension, the one likelihood convention of DESIGN.md §3 for every model.

Models see ``v = (x + u) / n_bins`` in ``[0, 1)`` and return ``log p(v)``; the discrete data's bits per dimension
is ``-log p(v) / (D ln 2) + log2(n_bins)`` with ``D = C·H·W``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["bits_per_dim", "dequantize"]


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, n_bins: int) -> torch.Tensor:
    """Bits per dimension of the discrete data from ``log p(v)`` of its dequantised version (per sample)."""
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    return -log_prob / (num_dims * math.log(2.0)) + math.log2(n_bins)


def dequantize(
    x: torch.Tensor, n_bins: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Uniform dequantisation ``v = (x + u) / n_bins``, ``u ~ U[0, 1)`` drawn once per pixel of ``x``.

    ``x`` holds integer levels in ``[0, n_bins)`` (any integer or float dtype); the result is floating
    (``dtype``, default float32) and lies in ``[0, 1)``: where ``x + u`` rounds up to the next level in
    low precision, ``v`` is clamped to the largest value below 1.
    """
    if x.is_floating_point():
        levels = x
    else:
        levels = x.to(dtype or torch.get_default_dtype())
    if dtype is None:
        dtype = levels.dtype if levels.is_floating_point() else torch.get_default_dtype()
    levels = levels.to(dtype)
    lo, hi = float(levels.min()), float(levels.max())
    if lo < 0 or hi > n_bins - 1:
        raise ValueError(f"data values must lie in [0, {n_bins - 1}] for n_bins={n_bins}, got range [{lo}, {hi}]")
    u = torch.rand(levels.shape, generator=generator, dtype=dtype, device=levels.device)
    v = (levels + u) / n_bins
    # In low precision (levels + u) can round up to the next level; keep v strictly below 1.
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    return v.clamp_(max=float(below_one))
