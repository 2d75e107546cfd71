"""Training objectives, named by registered specs such as ``{"type": "flow_matching", "sigma": 1e-4}``.

An objective is a function ``(model, batch, **params) -> (loss, metrics)`` registered in the component registry
with ``kind="objective"``: ``loss`` is the scalar to minimise for the :class:`~flowplug.data.Batch`, ``metrics``
are detached scalars to log. Its spec names it by ``type`` and sets its keyword-only ``params``. Extra loss terms
that components contribute (:mod:`flowplug.losses`) are added by the trainer, not here.

Configs and checkpoints hold specs only, so loading one never imports anything: a custom objective is registered
by the user's code (``flowplug.register("name", function, kind="objective")``) or a ``flowplug.components``
entry point before the config or checkpoint naming it is loaded. :func:`objective_spec` is the one place that
validates a spec.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from flowplug.cnf.coupling import COUPLINGS, TIME_OPTIONS, TIME_SAMPLINGS, sample_times
from flowplug.data import Batch
from flowplug.losses import collect_extra_losses
from flowplug.metrics import bits_per_dim
from flowplug.models.base import FlowModel, condition_kwargs
from flowplug.registry import check_arguments, components, get_component, register

__all__ = ["Objective", "ObjectiveModule", "check_objective_fits", "flow_matching", "get_objective", "likelihood",
           "objective_spec", "objectives"]

Objective = Callable[[FlowModel, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""An objective with its parameters bound: ``(model, batch) -> (loss, metrics)``."""

_KIND = "objective"


@register("likelihood", kind=_KIND)
def likelihood(model: FlowModel, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Maximum likelihood: the mean negative log-likelihood; logs ``nll`` and ``bpd``.

    Frozen levels (:meth:`~flowplug.models.base.FlowModel.set_trainable_levels`: level-wise training, a
    likelihood phase on some levels) are skipped, their terms being constants to the optimiser: ``nll`` is then
    that of the trained levels, and no ``bpd`` is logged (it would not be the model's). A conditional model scores
    ``log p(v | y)`` with the batch's labels."""
    log_prob = model.trainable_log_prob(batch.v, **condition_kwargs(model, batch.y))
    nll = -log_prob.mean()
    metrics = {"nll": nll.detach()}
    if not model.frozen_levels():
        metrics["bpd"] = bits_per_dim(log_prob.detach().mean(), math.prod(batch.v.shape[1:]), batch.n_bins)
    return nll, metrics


@register("flow_matching", kind=_KIND)
def flow_matching(
    model: FlowModel,
    batch: Batch,
    *,
    sigma: float = 1e-4,
    coupling: str = "independent",
    time_sampling: str = "uniform",
    time_options: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conditional flow matching of the model's CNFs (see :mod:`flowplug.cnf.flow_matching`).

    ``coupling`` (``"independent"`` or ``"ot"``, minibatch optimal transport) and ``time_sampling``
    (``"uniform"``, ``"stratified"``, ``"logit_normal"``, ``"power"``; options ``time_options``) choose how data
    and noise are paired and the times drawn (:mod:`flowplug.cnf.coupling`); the defaults are the measured best
    (``docs/benchmarks.md``, "What made the difference": OT and u² times did not help).

    No ODE is solved, so no likelihood is logged during training; evaluation still reports the
    exact-likelihood bits per dimension. Logs ``fm_loss`` and ``fm_level_<s>`` per level. A conditional model
    regresses given the batch's labels (its ``"ot"`` pairing stays within each class).
    """
    terms = model.level_flow_matching_losses(batch.v, sigma=sigma, **condition_kwargs(model, batch.y),
                                             coupling=coupling,
                                             time_sampling=time_sampling, time_options=time_options)
    loss = torch.stack(terms).sum()
    metrics = {f"fm_level_{s}": term.detach() for s, term in enumerate(terms)}
    return loss, {"fm_loss": loss.detach(), **metrics}


class ObjectiveModule(nn.Module):
    """A step's loss as one module: ``objective`` on ``model`` plus the extra terms its components contribute
    (:func:`flowplug.losses.collect_extra_losses`), so that DDP sees the whole loss computation as ``forward``."""

    def __init__(self, model: FlowModel, objective: Objective, n_bins: int) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.n_bins = n_bins

    def forward(self, v: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = self.objective(self.model, Batch(v, self.n_bins, y))
        for name, term in collect_extra_losses(self.model).items():
            loss = loss + term
            metrics[name] = term.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


def objectives() -> list[str]:
    """Names of the registered objectives."""
    return components(_KIND)


def objective_spec(objective: str | Mapping[str, Any]) -> dict[str, Any]:
    """The validated spec ``{"type": name, **params}`` of ``objective`` (a registered name or a spec).

    A bare name (as configs before specs recorded it) becomes ``{"type": name}``. An unregistered name raises
    ``ValueError`` naming it and how to register one; unknown or missing parameters raise ``TypeError``.
    """
    if isinstance(objective, str):
        objective = {"type": objective}
    if not isinstance(objective, Mapping) or "type" not in objective:
        raise TypeError(
            f"an objective is a registered name or a spec {{'type': name, ...}}, got {objective!r}; "
            "register a custom one with flowplug.register(name, function, kind='objective')"
        )
    spec = copy.deepcopy(dict(objective))
    params = {key: value for key, value in spec.items() if key != "type"}
    check_arguments(get_component(spec["type"], kind=_KIND), params, supplied=2)
    if spec["type"] == "flow_matching":
        _check_flow_matching_options(**params)
    return spec


def _check_flow_matching_options(
    sigma: float = 1e-4, coupling: str = "independent", time_sampling: str = "uniform",
    time_options: dict[str, float] | None = None,
) -> None:
    """Refuse values of :func:`flow_matching`'s options when the spec is made (a config, a checkpoint), not at the
    first training step; the option values of the time law are checked by drawing one time."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0.0 <= sigma < 1.0:
        raise ValueError(f"flow_matching: sigma must lie in [0, 1), got {sigma!r}")
    if coupling not in COUPLINGS:
        raise ValueError(f"flow_matching: unknown coupling {coupling!r}; choose one of {COUPLINGS}")
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"flow_matching: unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")
    if time_options is not None and not isinstance(time_options, Mapping):
        raise ValueError(f"flow_matching: time_options must be a dict, got {time_options!r}")
    unread = sorted(set(time_options or {}) - set(TIME_OPTIONS[time_sampling]))
    if unread:
        raise ValueError(f"flow_matching: time_options {unread} do not apply to time_sampling {time_sampling!r} "
                         f"(its options: {list(TIME_OPTIONS[time_sampling])})")
    sample_times(time_sampling, 1, **(time_options or {}))


def check_objective_fits(objective: Mapping[str, Any], model: FlowModel, where: str = "objective") -> None:
    """Raise ``ValueError`` when ``objective`` (a spec) cannot train ``model``: flow matching trains CNFs only."""
    if objective["type"] == "flow_matching" and not model.is_continuous:
        kind = (model.config or {}).get("type", type(model).__name__)
        raise ValueError(f"{where}: the flow_matching objective trains CNFs and {kind} has none; train it with "
                         "the likelihood objective")


def get_objective(objective: str | Mapping[str, Any]) -> Objective:
    """The objective function of a name or spec, its parameters bound (validated by :func:`objective_spec`)."""
    spec = objective_spec(objective)
    params = {key: value for key, value in spec.items() if key != "type"}
    return functools.partial(get_component(spec["type"], kind=_KIND).factory, **params)
