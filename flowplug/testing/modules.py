"""Small modules for testing flows: a chain of flows as one flow, and parameter perturbation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from normflows.flows import Flow
from torch import nn

from flowplug.conditioning import run_forward, run_inverse

__all__ = ["ComposedFlow", "perturb_parameters"]


class ComposedFlow(Flow):
    """A list of flows as one flow, in normflows' order: ``flows[0]`` acts first when sampling.

    ``forward(z)`` applies ``flows[0], flows[1], ...``; ``inverse(x)`` applies them in reverse. Both take
    ``context=``, passed only to the components that accept it, and return a log-det tensor of shape ``(B,)``
    on the input's device (unlike normflows 1.7.3's ``Composite``, which allocates it on the CPU).
    """

    def __init__(self, flows: Iterable[nn.Module]) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return run_forward(self.flows, z, context)

    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return run_inverse(self.flows, x, context)


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
