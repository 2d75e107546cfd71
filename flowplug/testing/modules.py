"""Parameter perturbation for property tests (the chain of flows is :class:`flowplug.conditioning.ComposedFlow`)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["perturb_parameters"]


def perturb_parameters(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Add independent ``N(0, std²)`` noise to every floating parameter of ``module`` in place; returns it.

    Many layers start as the identity (zero-initialised last layers of coupling nets, CNFs and
    autoregressive nets), where a wrong log-det or inverse can go unnoticed; property tests should run on
    perturbed parameters. The noise comes from a CPU generator seeded ``seed``, so it is reproducible.
    """
    if std < 0:
        raise ValueError(f"std must be non-negative, got {std}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.add_(noise.to(parameter.device, parameter.dtype), alpha=std)
    return module
