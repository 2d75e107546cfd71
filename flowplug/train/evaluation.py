"""Scoring a model on images: the one evaluation path of the trainer, ``flowplug evaluate``, ``flowplug ood`` and
the benchmarks.

Every score draws the dequantisation noise of ``data`` from ``seed`` (the same noise each time, so evaluations
of one model are comparable) and sums each level's log-density term per image (:func:`level_terms`).
:func:`evaluate` averages them over all of ``data`` (shared among ``torchrun`` processes); per-image scores
(:func:`flowplug.ood.score_images`) keep them apart. :func:`cnf_settings` changes the CNFs' evaluation trace or
solver tolerance for one block, e.g. to check that a figure is converged in the tolerance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from flowplug.cnf.flow import CNF, DIVERGENCES
from flowplug.cnf.solver import FIXED_STEP_METHODS, MAX_ADAPTIVE_STEPS, SolverSettings
from flowplug.data import ImageData, dequantize
from flowplug.metrics import bits_per_dim, level_bits_per_dim
from flowplug.models.base import FlowModel, condition_kwargs
from flowplug.train import distributed
from flowplug.train.labels import check_labels_fit

__all__ = ["cnf_settings", "count_nfe", "evaluate", "evaluation_inputs", "level_terms"]


def count_nfe(model: nn.Module) -> int | None:
    """Sum of ``last_nfe`` over the model's modules (CNF function evaluations), None if none."""
    counts = [m.last_nfe for m in model.modules() if getattr(m, "last_nfe", None) is not None]
    return int(sum(counts)) if counts else None


def evaluation_inputs(data: ImageData, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dequantised images ``v`` every evaluation of ``data`` with ``seed`` scores (the same noise each time)."""
    return dequantize(data.x, data.n_bins, generator=torch.Generator().manual_seed(seed + 2**31), dtype=dtype)


@contextlib.contextmanager
def cnf_settings(model: nn.Module, *, trace: str | None = None, tolerance: float | Sequence[float] | None = None,
                 steps: int | Sequence[int] | None = None, method: str = "rk4") -> Iterator[None]:
    """Within the block, every CNF of ``model`` evaluates and samples with the ``trace`` divergence and/or its
    evaluation solver at ``atol = rtol = tolerance``, or on a fixed grid of ``steps`` equal steps of the
    fixed-step ``method`` over its ``[0, T]`` (``4 · steps`` function evaluations per solve with ``"rk4"``). A
    multi-resolution model (with ``levels``) also takes a list of one tolerance, or one number of steps, per level,
    finest first. A ``tolerance`` or ``steps`` also replaces a CNF's ``sample_solver``: samples drawn without their
    log-density then solve the same way. The settings are restored after."""
    if trace is not None and trace not in DIVERGENCES:
        raise ValueError(f"unknown trace {trace!r}; expected one of {DIVERGENCES}")
    if steps is not None and tolerance is not None:
        raise ValueError("give a tolerance (adaptive solver) or steps (fixed grid), not both")
    if steps is not None and method not in FIXED_STEP_METHODS:
        raise ValueError(f"method must be a fixed-step method, one of {sorted(FIXED_STEP_METHODS)}, got {method!r}")
    tolerances = _value_of_each_cnf(model, tolerance, "tolerance", _check_tolerance)
    grids = _value_of_each_cnf(model, steps, "steps", _check_steps)
    cnfs = [m for m in model.modules() if isinstance(m, CNF)]
    saved = [(m.eval_divergence, m.eval_solver, m.sample_solver) for m in cnfs]
    for m in cnfs:
        if tolerance is not None or steps is not None:
            m.sample_solver = None
        if trace is not None:
            m.eval_divergence = trace
        if tolerance is not None:
            m.eval_solver = dataclasses.replace(m.eval_solver, atol=tolerances[id(m)], rtol=tolerances[id(m)])
        if steps is not None:
            m.eval_solver = SolverSettings(method=method, steps=grids[id(m)])
    try:
        yield
    finally:
        for m, (divergence, solver, sample_solver) in zip(cnfs, saved, strict=True):
            m.eval_divergence, m.eval_solver, m.sample_solver = divergence, solver, sample_solver


def _check_tolerance(tolerance: Any) -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ValueError(f"tolerance must lie in (0, 1), got {tolerance!r}")


def _check_steps(steps: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_ADAPTIVE_STEPS:
        raise ValueError(f"steps must be an integer from 1 to {MAX_ADAPTIVE_STEPS}, got {steps!r}")


def _value_of_each_cnf(model: nn.Module, value: Any, name: str, check: Callable[[Any], None]) -> dict[int, Any]:
    """``id(cnf) → value`` for every CNF of ``model``: one value for all, or a list of one per level of a
    multi-resolution model (its CNFs are its levels'); each value passes ``check``."""
    if value is None:
        return {}
    per_level = isinstance(value, Sequence) and not isinstance(value, str)
    for item in value if per_level else [value]:
        check(item)
    if not per_level:
        return {id(m): value for m in model.modules() if isinstance(m, CNF)}
    levels = getattr(model, "levels", None)
    if not isinstance(levels, nn.ModuleList) or len(levels) != len(value):
        count = f"{len(levels)} levels" if isinstance(levels, nn.ModuleList) else "no resolution levels"
        raise ValueError(f"{len(value)} values of {name} given, one per level, but the model has {count}")
    return {id(m): item for level, item in zip(levels, value, strict=True)
            for m in level.modules() if isinstance(m, CNF)}


def level_terms(model: FlowModel, inputs: torch.Tensor, *, batch_size: int, device: torch.device,
                nfes: list[int] | None = None, labels: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """``(levels, B)`` float64 log-density terms of each batch of the dequantised ``inputs`` under ``model`` (in
    eval mode, no gradients), on ``device``; each batch's function evaluations are appended to ``nfes``. A
    conditional model scores ``log p(v | y)`` with the images' ``labels``."""
    if model.is_conditional and labels is None:
        raise ValueError(f"{type(model).__name__} is conditional: scoring images needs their labels (log p(v | y)); "
                         "out-of-distribution scores, which need p(v), are not defined for conditional models")
    model.eval()
    parts = [None] * math.ceil(inputs.shape[0] / batch_size) if labels is None else labels.split(batch_size)
    with torch.no_grad():
        for batch, y in zip(inputs.split(batch_size), parts, strict=True):
            given = condition_kwargs(model, None if y is None else y.to(device))
            terms = torch.stack(model.level_log_probs(batch.to(device), **given)).double()
            nfe = count_nfe(model)
            if nfes is not None and nfe is not None:
                nfes.append(nfe)
            yield terms


def evaluate(
    model: FlowModel,
    data: ImageData,
    *,
    seed: int = 0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    trace: str | None = None,
    tolerance: float | Sequence[float] | None = None,
) -> dict[str, Any]:
    """Mean BPD of ``model`` over all of ``data``: ``bpd``, ``per_level_bpd``, ``num_images`` and, for CNF
    models, ``nfe``, the mean function evaluations per batch (images of a batch share the adaptive steps, so it
    is also the count per image).

    ``per_level_bpd[s]`` is level ``s``'s share ``-E[log p_s] / (D ln 2)``; their sum plus ``log2(n_bins)`` is
    ``bpd``. ``autocast`` is the precision context to score in (default none); ``trace`` and ``tolerance``
    override the CNFs' evaluation settings (:func:`cnf_settings`). A conditional model is scored given the
    images' labels: ``bpd`` is then the conditional ``-log p(v | y)`` in bits per dimension.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(data) == 0:
        raise ValueError(f"{data.name} has no images to evaluate")
    device = torch.device(device)
    check_labels_fit(model, data)
    share = slice(distributed.rank(), None, distributed.world_size())
    mine = evaluation_inputs(data, seed, dtype)[share]
    labels = data.y[share] if model.is_conditional else None
    sums, nfes = None, []
    with torch.random.fork_rng(devices=[]), autocast or contextlib.nullcontext(), \
            cnf_settings(model, trace=trace, tolerance=tolerance):
        torch.manual_seed(seed)
        for terms in level_terms(model, mine, batch_size=batch_size, device=device, nfes=nfes, labels=labels):
            sums = terms.sum(1) if sums is None else sums + terms.sum(1)
    count = torch.tensor(float(mine.shape[0]), dtype=torch.float64, device=device)
    totals = distributed.all_reduce_mean(torch.cat([sums, count.view(1)]))
    mean_terms = list(totals[:-1] / totals[-1])
    dims = math.prod(data.image_shape)
    result: dict[str, Any] = {
        "bpd": float(bits_per_dim(mean_terms, dims, data.n_bins)),
        "per_level_bpd": [float(b) for b in level_bits_per_dim(mean_terms, dims)],
        "num_images": len(data),
        **({"conditional": True} if model.is_conditional else {}),
    }
    if nfes:
        result["nfe"] = sum(nfes) / len(nfes)
    return result
