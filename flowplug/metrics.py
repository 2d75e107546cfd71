"""Bits per dimension, the one likelihood convention of ``docs/design.md`` §3 for every model.

Models see ``v = (x + u) / n_bins`` in ``[0, 1)`` (:func:`flowplug.data.dequantize`) and return ``log p(v)``; the
discrete data's bits per dimension is ``-log p(v) / (D ln 2) + log2(n_bins)`` with ``D = C·H·W``. A multi-level
model's ``log p(v)`` is a sum of per-level terms; level ``s``'s share is ``-log p_s / (D ln 2)`` (``D`` of the whole
image), and ``log2(n_bins)`` belongs to the whole image. Models, the trainer's evaluation, the objectives and the
benchmarks all go through these two functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["bits_per_dim", "level_bits_per_dim"]


def level_bits_per_dim(level_log_probs: Sequence[torch.Tensor], num_dims: int) -> list[torch.Tensor]:
    """Each level's share ``-log p_s / (D ln 2)`` of the bits per dimension (same shape as its term)."""
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    return [-term / (num_dims * math.log(2.0)) for term in level_log_probs]


def bits_per_dim(
    log_prob: torch.Tensor | Sequence[torch.Tensor], num_dims: int, n_bins: int
) -> torch.Tensor:
    """Bits per dimension of the discrete data from ``log p(v)`` of its dequantised version.

    ``log_prob`` is ``log p(v)`` (any shape, e.g. per sample) or the list of a model's per-level terms, which
    are summed: the result is ``Σ_s level_bits_per_dim(...)[s] + log2(n_bins)``.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    terms = [log_prob] if isinstance(log_prob, torch.Tensor) else list(log_prob)
    return sum(level_bits_per_dim(terms, num_dims)) + math.log2(n_bins)
