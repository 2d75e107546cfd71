"""Training as a plan of phases, and the budget that the plan is laid out on.

A run's :attr:`~flowplug.train.config.TrainConfig.phases` is a list of plain dicts, run in order::

    [{"objective": "flow_matching", "until": 0.65},
     {"objective": "likelihood", "levels": [0], "lr": 2e-3}]

- ``objective``: a registered objective's name or spec (:mod:`flowplug.train.objectives`).
- ``until``: where the phase ends, as a fraction of the run's budget in ``(0, 1)`` (of its steps, epochs or
  minutes: whichever budget is spent first), or ``{"step": N}``; the last phase has none and runs to the end.
- ``lr``: the phase's constant learning rate (``None``: the run's schedule goes on).
- ``levels``: the levels of a multi-level model the phase trains (``None``: those the run trains); the others
  are frozen and, for the likelihood, not solved.

Every phase after the first starts from the EMA weights (when the run keeps an EMA, which restarts from them)
with fresh optimiser moments: one objective's gradient statistics do not fit another's.

The budget's *progress* is the fraction spent: ``step / total_steps`` for a step or epoch budget, training time
over ``minutes`` for a time budget (time in evaluations, samples and checkpoints is not counted), the larger
of the two when both are given. Phase ends, evaluation points and the default checkpoints are placed on it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowplug.train.ema import make_ema
from flowplug.train.feedback import notify
from flowplug.train.objectives import check_objective_fits, objective_spec

if TYPE_CHECKING:
    from flowplug.models.base import FlowModel
    from flowplug.train.trainer import Trainer

__all__ = ["MAX_LR", "PHASE_KEYS", "advance_phases", "check_learning_rate", "check_plan_fits",
           "migrate_phase_options", "normalize_phases", "phase_over"]

PHASE_KEYS = ("objective", "until", "lr", "levels")
"""The keys a phase may hold."""


MAX_LR = 1e6
"""The largest learning rate a run or phase accepts: beyond it an optimiser step moves each weight by more than a
million (Adam's steps are about ``lr`` per weight), and near float32's range torch's optimisers fail outright."""


def check_learning_rate(lr: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``lr`` is a number in ``(0, MAX_LR]``."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= MAX_LR:
        raise ValueError(f"{name} must be a positive number of at most {MAX_LR:g}, got {lr!r}")


def _check_levels(levels: Any, where: str) -> list[int] | None:
    if levels is None:
        return None
    if (not isinstance(levels, list) or not levels or len(set(levels)) != len(levels)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in levels)):
        raise ValueError(f"{where} must be a non-empty list of distinct level indices (integers >= 0), "
                         f"got {levels!r}")
    return list(levels)


def _check_until(until: Any, where: str) -> float | dict[str, int]:
    if isinstance(until, Mapping):
        step = until.get("step")
        if set(until) != {"step"} or isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"{where} must be a fraction of the budget in (0, 1) or {{'step': N}} with N >= 1, "
                             f"got {dict(until)!r}")
        return {"step": step}
    if isinstance(until, bool) or not isinstance(until, (int, float)) or not 0 < until < 1:
        raise ValueError(f"{where} must be a fraction of the budget in (0, 1) or {{'step': N}}, got {until!r}")
    return float(until)


def normalize_phases(phases: Sequence[Mapping[str, Any]] | None, objective: Any) -> list[dict[str, Any]]:
    """The validated plan: ``phases`` with objectives as specs, or one phase of ``objective`` when ``phases`` is
    ``None``. Raises ``ValueError``/``TypeError`` naming the phase and key that is wrong."""
    if phases is None:
        objective = objective if objective is not None else "likelihood"
        return [{"objective": objective_spec(objective), "until": None, "lr": None, "levels": None}]
    if isinstance(phases, (str, Mapping)) or not isinstance(phases, Sequence) or not phases:
        raise ValueError(f"phases must be a non-empty list of phase dicts, got {phases!r}")
    plan = []
    for i, phase in enumerate(phases):
        where = f"phases[{i}]"
        if not isinstance(phase, Mapping):
            raise ValueError(f"{where} must be a dict with keys from {PHASE_KEYS}, got {phase!r}")
        unknown = sorted(set(phase) - set(PHASE_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; a phase holds {PHASE_KEYS}")
        if "objective" not in phase:
            raise ValueError(f"{where} needs an 'objective'")
        last = i == len(phases) - 1
        if last and phase.get("until") is not None:
            raise ValueError(f"{where}: the last phase runs to the end of the budget; remove its 'until'")
        if not last and phase.get("until") is None:
            raise ValueError(f"{where} needs an 'until' (a fraction of the budget, or {{'step': N}})")
        lr = phase.get("lr")
        if lr is not None:
            check_learning_rate(lr, f"{where}.lr")
        plan.append({
            "objective": objective_spec(phase["objective"]),
            "until": None if last else _check_until(phase["until"], f"{where}.until"),
            "lr": None if lr is None else float(lr),
            "levels": _check_levels(phase.get("levels"), f"{where}.levels"),
        })
    fractions = [p["until"] for p in plan if isinstance(p["until"], float)]
    steps = [p["until"]["step"] for p in plan if isinstance(p["until"], dict)]
    if fractions != sorted(set(fractions)) or steps != sorted(set(steps)):
        raise ValueError(f"the phases' 'until' must increase from one phase to the next, got "
                         f"{[p['until'] for p in plan[:-1]]}")
    return plan


def phase_over(until: float | Mapping[str, int] | None, step: int, progress: float) -> bool:
    """Whether a phase ending at ``until`` is over at ``step`` with ``progress`` of the budget spent."""
    if until is None:
        return False
    if isinstance(until, Mapping):
        return step >= until["step"]
    return progress >= until


def check_plan_fits(plan: Sequence[Mapping[str, Any]], model: FlowModel) -> None:
    """Raise the error of the first phase that cannot train ``model``: an objective it cannot use (flow matching
    without CNFs) or levels it does not have."""
    for i, phase in enumerate(plan):
        check_objective_fits(phase["objective"], model, f"phases[{i}]")
        if phase["levels"] is not None:
            model.check_levels(phase["levels"])


def advance_phases(trainer: Trainer, progress: float) -> None:
    """Begin every phase of ``trainer``'s plan whose predecessor is over at its step and ``progress`` of the
    budget: from the EMA weights (the EMA restarts from them), with fresh optimiser moments, on its levels."""
    plan = trainer.config.phases
    while trainer.phase + 1 < len(plan) and phase_over(plan[trainer.phase]["until"], trainer.step, progress):
        trainer.phase += 1
        trainer.phase_starts.append(trainer.step)
        trainer.ensure_ema()
        if trainer.ema is not None:
            trainer.model.load_state_dict(trainer.ema.module.state_dict())
            trainer.ema = make_ema(trainer.model, trainer.config.ema_decay)
        trainer.optimizer.state.clear()
        trainer.apply_phase_levels()
        notify(f"step {trainer.step}: phase {trainer.phase + 1} of {len(plan)} begins "
               f"({plan[trainer.phase]['objective']['type']})")


_LEGACY_KEYS = ("likelihood_after", "likelihood_minutes", "likelihood_lr", "likelihood_levels")


def migrate_phase_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer options of versions before phases, rewritten as a plan: ``likelihood_after`` (a step) or
    ``likelihood_minutes`` (minutes before the end of the ``minutes`` budget) started a likelihood phase with
    ``likelihood_lr`` on ``likelihood_levels``. Options without those keys come back unchanged (a copy)."""
    options = copy.deepcopy(dict(options))
    legacy = {key: options.pop(key) for key in _LEGACY_KEYS if key in options}
    after, minutes_left = legacy.get("likelihood_after"), legacy.get("likelihood_minutes")
    if after is None and minutes_left is None:
        return options
    if "phases" in options and options["phases"] is not None:
        raise ValueError(f"give the plan once: phases, or the older options {sorted(legacy)}, not both")
    if after is not None and minutes_left is not None:
        raise ValueError("give the likelihood phase's start once: likelihood_after or likelihood_minutes")
    if after is not None:
        until: float | dict[str, int] = {"step": after}
    else:
        budget = options.get("minutes")
        if budget is None or not 0 < minutes_left < budget:
            raise ValueError(f"likelihood_minutes={minutes_left} must be less than the minutes budget "
                             f"(minutes={budget})")
        until = (budget - minutes_left) / budget
    first = options.pop("objective", None) or "likelihood"
    options["phases"] = [
        {"objective": first, "until": until},
        {"objective": "likelihood", "lr": legacy.get("likelihood_lr"), "levels": legacy.get("likelihood_levels")},
    ]
    return options
