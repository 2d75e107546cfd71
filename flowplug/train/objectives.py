"""Training objectives: a callable ``(model, v, n_bins) -> (loss, metrics)`` chosen by name.

``loss`` is the scalar to minimise for the batch ``v`` (dequantised images in ``[0, 1)``);
``metrics`` are detached scalars to log. Extra loss terms that components contribute
(:mod:`flowplug.losses`) are added by the trainer, not here. Objectives register in
:data:`OBJECTIVES`: ``"likelihood"`` is maximum likelihood, ``"flow_matching"`` regresses CNF
velocity fields (MRCNF and the single-resolution CNF).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from flowplug.metrics import bits_per_dim

__all__ = ["OBJECTIVES", "Objective", "flow_matching", "get_objective", "likelihood"]

Objective = Callable[[nn.Module, torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def likelihood(
    model: nn.Module, v: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean negative log-likelihood; logs ``nll`` and ``bpd`` (DESIGN.md section 3)."""
    log_prob = model.log_prob(v)
    nll = -log_prob.mean()
    bpd = bits_per_dim(log_prob.detach().mean(), math.prod(v.shape[1:]), n_bins)
    return nll, {"nll": nll.detach(), "bpd": bpd}


def flow_matching(
    model: nn.Module, v: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's conditional flow-matching loss (CNF models, see :mod:`flowplug.cnf.flow_matching`).

    No ODE is solved, so no likelihood is logged during training; evaluation still reports the
    exact-likelihood bits per dimension. Logs ``fm_loss`` and, for multi-level models, ``fm_level_<s>``.
    """
    del n_bins  # the regression loss does not depend on the quantisation
    per_level = getattr(model, "level_flow_matching_losses", None)
    if per_level is None:
        loss = model.flow_matching_loss(v)
        return loss, {"fm_loss": loss.detach()}
    terms = per_level(v)
    loss = torch.stack(terms).sum()
    metrics = {f"fm_level_{s}": term.detach() for s, term in enumerate(terms)}
    return loss, {"fm_loss": loss.detach(), **metrics}


OBJECTIVES: dict[str, Objective] = {"likelihood": likelihood, "flow_matching": flow_matching}


def get_objective(objective: str | Objective) -> Objective:
    """An objective by name (a key of :data:`OBJECTIVES`) or the callable itself."""
    if callable(objective):
        return objective
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)} or a callable"
        ) from None
