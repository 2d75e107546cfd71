"""What a resume may change: options that take effect as they are, options applied to the restored optimiser
and schedule, and options that would make the continuation a different run (refused).

Every change is returned so the trainer records it (``config.json`` and the checkpoint's ``resumes``); none
is ever silently ignored.
"""

from __future__ import annotations

from typing import Any

from flowplug.train.config import TrainConfig, lr_factor

__all__ = ["APPLIED", "REFUSED", "changed_options", "extension_segment"]

REFUSED = ("batch_size", "seed", "objective", "precision", "ema_decay", "warmup_steps", "schedule")
"""Options a resume refuses to change: the data order, noise, loss, number format or EMA would no longer be
those the checkpoint was trained with."""
APPLIED = ("lr", "weight_decay", "likelihood_lr")
"""Options a resume applies to the restored optimiser and schedule (the base rate; the schedule's shape
is kept)."""


def changed_options(saved: dict[str, Any], config: TrainConfig) -> dict[str, list[Any]]:
    """``{option: [checkpoint's value, new value]}`` for every option that differs from the checkpoint's;
    raises ``ValueError`` naming the options in :data:`REFUSED` that differ."""
    current = config.to_dict()
    changes = {key: [saved.get(key), value] for key, value in current.items()
               if key in saved and saved[key] != value}
    refused = [key for key in REFUSED if key in changes]
    if refused:
        details = ", ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        raise ValueError(f"cannot resume with a changed {details}: the continuation would no longer be "
                         "the run the checkpoint belongs to; keep the checkpoint's values or start a new run "
                         "in another folder")
    return changes


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
