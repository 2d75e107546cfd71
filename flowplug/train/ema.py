"""The exponential moving average of a model's weights that evaluation and samples use."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["make_ema"]


def _ema_with_warmup(decay: float) -> Callable[..., None]:
    """EMA update whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.

    A fixed decay of 0.999 would keep over half the weight on the first parameters for 600 steps,
    so short runs would be evaluated at nearly their initialisation; the ramp follows the current
    weights early and averages over about ``1 / (1 - decay)`` steps later on.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        pairs = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([a for a, _ in pairs], [c for _, c in pairs], 1.0 - effective)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # flags and counters (e.g. "initialised") are copied
                a.copy_(c)

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An averaged copy of ``model`` (weights and buffers) updated by ``update_parameters(model)``.

    Make it after any data-dependent initialisation, which the copy then starts from.
    """
    return AveragedModel(model, multi_avg_fn=_ema_with_warmup(decay), use_buffers=True)
