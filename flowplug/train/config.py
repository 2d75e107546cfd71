"""The settings of a training run (:class:`TrainConfig`), validated when made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from flowplug.train.budget import CLOCKS
from flowplug.train.objectives import objective_spec
from flowplug.train.phases import check_learning_rate, migrate_phase_options, normalize_phases

__all__ = ["BUDGETS", "CLOCKS", "PRECISIONS", "SCHEDULES", "TrainConfig", "override_options"]

PRECISIONS = ("auto", "float32", "float64", "bf16")
SCHEDULES = ("cosine", "constant")


BUDGETS = ("steps", "epochs", "minutes")


def override_options(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Trainer options ``base`` with ``overrides`` over them. A budget in ``overrides`` replaces the whole budget
    of ``base`` (``--minutes 10`` drops a recipe's step budget), and a time budget alone keeps the rate constant
    (a cosine needs a step count)."""
    if any(key in overrides for key in BUDGETS):
        base = {key: value for key, value in base.items() if key not in BUDGETS}
        if "minutes" in overrides and "steps" not in overrides and "epochs" not in overrides:
            base["schedule"] = "constant"
    return {**base, **overrides}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    objective: str | dict[str, Any] | None = None
    """The objective of a one-phase run: a registered objective's name or spec, e.g.
    ``{"type": "flow_matching", "sigma": 1e-4}`` (:mod:`flowplug.train.objectives`); ``None``: the likelihood, or
    the first phase's when ``phases`` are given. After validation it is the first phase's objective, as a spec.
    Evaluation always reports exact-likelihood bits per dimension."""
    phases: list[dict[str, Any]] | None = None
    """The training plan (:mod:`flowplug.train.phases`), e.g. ``[{"objective": "flow_matching", "until": 0.65},
    {"objective": "likelihood", "levels": [0], "lr": 2e-3}]``; ``None``: one phase of ``objective``. Stored
    validated, with objectives as specs."""
    trainable_levels: list[int] | None = None
    """Train only these levels of a multi-level model (``set_trainable_levels``); the rest stay frozen."""
    seed: int = 0
    hflip: bool = False
    log_every: int = 10
    eval_every: int | None = None
    """Evaluate the validation data every this many steps (besides the final evaluation)."""
    eval_points: int | None = None
    """Evaluate the validation data at this many evenly spaced points of the budget (the last at its end), e.g.
    for a BPD-against-time curve of a time budget, whose steps are not known in advance."""
    eval_batch_size: int = 256
    sample_every: int | None = None
    num_samples: int = 64
    temperature: float = 1.0
    checkpoint_every: int | None = None
    """Checkpoint every this many steps; ``None``: at each quarter of the budget (and at the end)."""
    keep_last: int = 2
    max_bad_steps: int = 20
    """Consecutive non-finite steps after which the run stops with an error."""
    progress: bool = True
    tensorboard: bool | None = None
    """Write TensorBoard events: ``None`` when the package is installed, ``True`` (say so when it is not),
    ``False`` never."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulation", "eval_batch_size", "num_samples",
                     "keep_last", "max_bad_steps", "log_every", "eval_every", "sample_every",
                     "checkpoint_every", "eval_points"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_learning_rate(self.lr, "lr")
        for name in ("epochs", "minutes", "temperature", "grad_clip"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("hflip", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.tensorboard is not None and not isinstance(self.tensorboard, bool):
            raise ValueError(f"tensorboard must be true, false or null, got {self.tensorboard!r}")
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
        if self.ema_decay is not None and (not _is_number(self.ema_decay) or not 0.0 < self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not _is_number(self.weight_decay) or not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must lie in [0, 1), got {self.weight_decay!r}")
        self._check_plan()

    def _check_plan(self) -> None:
        given = None if self.objective is None else objective_spec(self.objective)
        self.phases = normalize_phases(self.phases, given)
        first = self.phases[0]["objective"]
        if given is not None and given != first:
            raise ValueError(f"objective {given} differs from the first phase's {first}; give the objective in "
                             "the phases (or leave phases out for a one-phase run)")
        self.objective = first
        if self.trainable_levels is not None:
            for i, phase in enumerate(self.phases):
                if phase["levels"] is not None and not set(phase["levels"]) <= set(self.trainable_levels):
                    raise ValueError(f"phases[{i}].levels {phase['levels']} must be among the trainable_levels "
                                     f"{self.trainable_levels}: a phase cannot train a level the run froze")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from plain data; unknown keys raise ``ValueError`` naming them. Options of versions before
        phases (``likelihood_after``, ``likelihood_minutes``, ``likelihood_lr``, ``likelihood_levels``) are
        rewritten as phases (:func:`~flowplug.train.phases.migrate_phase_options`)."""
        values = migrate_phase_options(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trainer option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)
