"""The learning rate of every step, in one place: linear warm-up, then cosine decay to 0 at the end of the step
budget (or constant), a new cosine segment when a resume extends the budget, and a phase's own constant rate.

The trainer sets each optimiser group's rate from :func:`learning_rate` before every step; no scheduler state
is kept, so a resumed run recomputes exactly the rates the uninterrupted run used.
"""

from __future__ import annotations

import math
from typing import Any

from flowplug.train.config import TrainConfig

__all__ = ["extension_segment", "learning_rate", "lr_factor"]


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


def learning_rate(config: TrainConfig, step: int, total_steps: int | None, segment: tuple[int, float] | None,
                  phase: dict[str, Any]) -> float:
    """The rate of ``step`` in ``phase`` (one of ``config.phases``): the phase's own constant ``lr`` when it sets
    one, else ``config.lr`` times :func:`lr_factor`."""
    if phase["lr"] is not None:
        return phase["lr"]
    return config.lr * lr_factor(config, step, total_steps, segment)


def extension_segment(config: TrainConfig, step: int, old_total: int | None, new_total: int | None,
                      segment: tuple[int, float] | None) -> tuple[int, float] | None:
    """The schedule segment after a resume at ``step`` that moves the budget from ``old_total`` to
    ``new_total`` (``segment``: the one in force before).

    Unchanged budgets, a constant schedule and a resume inside the warm-up keep ``segment``. Otherwise a new
    cosine segment starts at ``step``: from the rate the run had reached when its schedule had not finished
    (no jump), or, for a finished schedule (rate 0), from the rate a schedule planned for ``new_total``
    steps has at ``step``.
    """
    if old_total == new_total or config.schedule == "constant" or step < config.warmup_steps:
        return segment
    if old_total is not None and step < old_total:
        return step, lr_factor(config, step, old_total, segment)
    return step, lr_factor(config, step, new_total)
