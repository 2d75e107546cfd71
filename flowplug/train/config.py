"""The settings of a training run (:class:`TrainConfig`), validated when made, and the learning-rate schedule."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from flowplug.train.objectives import objective_spec

__all__ = ["CLOCKS", "PRECISIONS", "SCHEDULES", "TrainConfig", "budget_clock", "lr_factor"]

PRECISIONS = ("auto", "float32", "float64", "bf16")
SCHEDULES = ("cosine", "constant")
CLOCKS = ("wall", "process")


@dataclass
class TrainConfig:
    """Everything that shapes a run. Budgets: training stops at the first of ``steps``, ``epochs``
    and ``minutes`` that is reached (at least one is needed)."""

    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    clock: str = "wall"
    """What ``minutes`` counts: ``"wall"`` (elapsed time) or ``"process"`` (CPU seconds of this process,
    ``time.process_time()``, all its threads together), which keeps budgets equal between runs that share
    the CPU cores with other work."""
    batch_size: int = 64
    """Images per optimiser step over all processes and accumulation micro-batches."""
    accumulation: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    schedule: str = "cosine"
    """``"cosine"`` (decay to 0 over the step/epoch budget after warm-up) or ``"constant"``."""
    grad_clip: float | None = 50.0
    ema_decay: float | None = 0.999
    """Decay of the weights' moving average used for evaluation and samples (ramped up from 0.1
    over the first updates); ``None`` evaluates the raw weights."""
    precision: str = "auto"
    """``"float32"``, ``"float64"``, ``"bf16"`` (autocast, CUDA) or ``"auto"``: bf16 on CUDA for
    discrete flows, float32 for continuous ones (:attr:`FlowModel.is_continuous`) and on other devices."""
    objective: str | dict[str, Any] = "likelihood"
    """A registered objective's name or spec, e.g. ``{"type": "flow_matching", "sigma": 1e-4}``
    (:mod:`flowplug.train.objectives`); stored as a spec. Evaluation always reports exact-likelihood
    bits per dimension."""
    likelihood_after: int | None = None
    """Start the likelihood fine-tuning phase at this step (e.g. after flow-matching pre-training). When the
    phase starts, training continues from the EMA weights (when there is an EMA, which then restarts from
    them), with the optimiser's moments reset: the flow-matching loss's gradient statistics do not fit the
    likelihood's."""
    likelihood_minutes: float | None = None
    """Start the likelihood phase when this many minutes of the ``minutes`` budget are left (instead of at a
    step: with a time budget the step count is not known in advance)."""
    likelihood_lr: float | None = None
    """The learning rate of the likelihood phase, constant from its first step; ``None``: the run's schedule
    goes on."""
    trainable_levels: list[int] | None = None
    """Train only these levels of a multi-level model (``set_trainable_levels``); the rest stay frozen."""
    likelihood_levels: list[int] | None = None
    """The levels of a multi-level model that the likelihood phase trains; the others are frozen from the
    phase's first step and their likelihood terms, constants to the optimiser, are not computed (on MNIST a
    phase on the finest level alone took three times the steps of one on both levels). ``None``: the levels
    training had (``trainable_levels``)."""
    seed: int = 0
    hflip: bool = False
    log_every: int = 10
    eval_every: int | None = None
    eval_batch_size: int = 256
    sample_every: int | None = None
    num_samples: int = 64
    temperature: float = 1.0
    checkpoint_every: int | None = None
    keep_last: int = 2
    max_bad_steps: int = 20
    """Consecutive non-finite steps after which the run stops with an error."""
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulation", "eval_batch_size", "num_samples",
                     "keep_last", "max_bad_steps", "log_every", "eval_every", "sample_every",
                     "checkpoint_every", "likelihood_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("epochs", "minutes", "lr", "temperature", "grad_clip", "likelihood_minutes", "likelihood_lr"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.steps is None and self.epochs is None and self.minutes is None:
            raise ValueError("give a training budget: steps, epochs or minutes")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "cosine" and self.steps is None and self.epochs is None:
            raise ValueError("schedule='cosine' needs a steps or epochs budget; "
                             "use schedule='constant' with minutes alone")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must not be negative")
        self.objective = objective_spec(self.objective)
        self._check_likelihood_phase()

    def _check_likelihood_phase(self) -> None:
        if self.likelihood_after is not None and self.likelihood_minutes is not None:
            raise ValueError("give the likelihood phase's start once: likelihood_after (a step) or "
                             "likelihood_minutes (minutes before the end of the budget), not both")
        if self.likelihood_minutes is not None and (self.minutes is None or self.likelihood_minutes >= self.minutes):
            raise ValueError(f"likelihood_minutes={self.likelihood_minutes} must be less than the minutes budget "
                             f"(minutes={self.minutes})")
        if self.likelihood_levels is not None:
            levels = self.likelihood_levels
            if (not isinstance(levels, list) or not levels or len(set(levels)) != len(levels)
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in levels)):
                raise ValueError(f"likelihood_levels must be a non-empty list of distinct level indices (integers "
                                 f">= 0), got {levels!r}")
            if self.trainable_levels is not None and not set(levels) <= set(self.trainable_levels):
                raise ValueError(f"likelihood_levels {levels} must be among the trainable_levels "
                                 f"{self.trainable_levels}: the phase cannot train a level training froze")
        phase = self.likelihood_after is not None or self.likelihood_minutes is not None
        if phase and self.objective["type"] == "likelihood":
            raise ValueError("the objective is already the likelihood: a likelihood phase needs another "
                             "objective before it (e.g. flow_matching)")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from plain data; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trainer option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def budget_clock(clock: str) -> float:
    """The current reading in seconds of the budget clock ``clock`` (one of :data:`CLOCKS`)."""
    if clock == "process":
        return time.process_time()
    if clock == "wall":
        return time.monotonic()
    raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")


def lr_factor(config: TrainConfig, step: int, total_steps: int | None,
              segment: tuple[int, float] | None = None) -> float:
    """The learning rate's multiplier at ``step``: linear warm-up, then cosine decay to 0 at ``total_steps``
    (or constant).

    ``segment = (start, factor)`` is a budget extended on resume: from step ``start`` on, a new cosine segment
    decays from ``factor`` (the rate the run had reached) to 0 at the new ``total_steps``.
    """
    if segment is not None and step >= segment[0] and total_steps:
        start, factor = segment
        progress = min(1.0, (step - start) / max(1, total_steps - start))
        return factor * 0.5 * (1.0 + math.cos(math.pi * progress))
    warmup = config.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant" or not total_steps:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
