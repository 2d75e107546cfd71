"""Classifier-free guidance of a conditional CNF: the velocity field pushed away from its unconditional twin.

A CNF conditioned through its context and trained with the condition sometimes replaced by a *null* condition
(``MRCNF(label_dropout=p)``) learns two fields with one net: ``f(t, z | c)`` and ``f(t, z | ∅)``. Guided sampling
(Ho & Salimans 2022, "Classifier-free diffusion guidance", here on a flow-matching field) integrates

    f_w(t, z) = f(t, z | c) + w · (f(t, z | c) − f(t, z | ∅)) = (1 + w) f(t, z | c) − w f(t, z | ∅).

``w = 0`` is the model itself, ``w = −1`` its unconditional field, ``w > 0`` exaggerates what the condition
changes. The guided field is an ODE like any other, so its flow is invertible and its log-determinant is the
integral of its divergence: the ``log q`` that a guided solve returns is the exact density of the *guided
sampler*, not the model's ``p(x | c)`` (which only ``w = 0`` samples from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Guidance", "GuidedVelocity"]


@dataclass(frozen=True)
class Guidance:
    """Guide a CNF's solve with ``weight`` ``w`` (any finite number) against ``null_context``, the context of
    the null condition, of the same shape, dtype and device as the solve's own context."""

    weight: float
    null_context: torch.Tensor

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not math.isfinite(
                self.weight):
            raise ValueError(f"the guidance weight must be a finite number, got {self.weight!r}")
        if not isinstance(self.null_context, torch.Tensor):
            raise TypeError(f"null_context must be a tensor, got {type(self.null_context).__name__}")


class GuidedVelocity(nn.Module):
    """The field ``(1 + w) net(t, z, context) − w net(t, z, null_context)``, called like an ODE net.

    Both evaluations run as one call of ``net`` on the doubled batch ``[z; z]`` with contexts
    ``[context; null_context]``, so guided solves cost one (twice as wide) net call per step.
    """

    def __init__(self, net: nn.Module, guidance: Guidance) -> None:
        super().__init__()
        self.net = net
        self.weight = float(guidance.weight)
        self.null_context = guidance.null_context

    def forward(self, t: torch.Tensor | float, z: torch.Tensor, context: torch.Tensor | None = None
                ) -> torch.Tensor:
        if context is None or context.shape != self.null_context.shape:
            raise ValueError(
                f"guidance needs a context of the null context's shape {tuple(self.null_context.shape)}, got "
                f"{None if context is None else tuple(context.shape)}"
            )
        t = torch.as_tensor(t)
        both = self.net(t if t.ndim == 0 else torch.cat([t, t]), torch.cat([z, z]),
                        context=torch.cat([context, self.null_context]))
        conditional, unconditional = both.chunk(2)
        return conditional + self.weight * (conditional - unconditional)
