"""One way for any component to contribute extra training loss terms (RNODE regularisers, for example).

A module that wants to add to the training loss defines ``extra_loss_terms(self) -> dict[str, Tensor]``
returning scalar tensors, already multiplied by their coefficients, recorded during its most recent pass
(and an empty dict when it has nothing to add, e.g. all coefficients are 0). :func:`collect_extra_losses`
gathers them from a whole model; the shared trainer adds their sum to the negative log-likelihood.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["ContributesLoss", "collect_extra_losses"]


@runtime_checkable
class ContributesLoss(Protocol):
    """A module that contributes weighted extra loss terms from its last pass."""

    def extra_loss_terms(self) -> dict[str, torch.Tensor]: ...


def collect_extra_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every extra loss term of every submodule, keyed ``"<module path>.<term>"`` (the model itself: ``"<term>"``)."""
    terms: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        if isinstance(module, ContributesLoss):
            for name, value in module.extra_loss_terms().items():
                terms[f"{path}.{name}" if path else name] = value
    return terms
