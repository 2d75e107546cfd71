"""Training objectives: a callable ``(model, v, n_bins) -> (loss, metrics)`` chosen by name.

``loss`` is the scalar to minimise for the batch ``v`` (dequantised images in ``[0, 1)``);
``metrics`` are detached scalars to log. Extra loss terms that components contribute
(:mod:`flowplug.losses`) are added by the trainer, not here. Objectives register in
:data:`OBJECTIVES`: ``"likelihood"`` is maximum likelihood, ``"flow_matching"`` regresses CNF
velocity fields (MRCNF and the single-resolution CNF).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flowplug.metrics import bits_per_dim

__all__ = ["OBJECTIVES", "Objective", "flow_matching", "get_objective", "likelihood", "objective_name"]

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
    """An objective by name (a key of :data:`OBJECTIVES`, or ``"module:function"`` for one defined
    elsewhere, as :func:`objective_name` records it) or the callable itself."""
    if callable(objective):
        return objective
    if objective in OBJECTIVES:
        return OBJECTIVES[objective]
    if isinstance(objective, str) and ":" in objective:
        module_name, _, qualname = objective.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import the objective {objective!r}: {error}") from None
        if callable(found):
            return found
    raise ValueError(
        f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}, "
        "'module:function' or a callable"
    )


def objective_name(objective: str | Objective) -> str:
    """How a config records ``objective`` as plain data: its key in :data:`OBJECTIVES`, or
    ``"module:qualname"`` for another callable (importable again where it is a module-level name)."""
    if isinstance(objective, str):
        return objective
    for name, known in OBJECTIVES.items():
        if known is objective:
            return name
    return f"{objective.__module__}:{objective.__qualname__}"
