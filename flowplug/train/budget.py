"""A run's budget: how much of it is spent, on one clock for every process.

Only training counts: the clock runs while :meth:`Budget.training` is active (batches and optimiser steps) and
stands still during evaluations, samples and checkpoints, so that a time budget buys the same training whatever
else the run does. ``clock="process"`` counts this process's CPU seconds (all its threads), which keeps budgets
equal between runs that share the cores with other work.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch

from flowplug.train import distributed

__all__ = ["CLOCKS", "Budget", "BudgetPoints", "budget_clock"]

CLOCKS = ("wall", "process")


def budget_clock(clock: str) -> float:
    """The current reading in seconds of the budget clock ``clock`` (one of :data:`CLOCKS`)."""
    if clock == "process":
        return time.process_time()
    if clock == "wall":
        return time.monotonic()
    raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")


class Budget:
    """The budget of one ``fit``: ``total_steps`` (from steps or epochs) and/or ``minutes`` on ``clock``."""

    def __init__(self, total_steps: int | None, minutes: float | None, clock: str, device: torch.device) -> None:
        self.total_steps = total_steps
        self.minutes = minutes
        self.clock = clock
        self.device = device
        self.spent_s = 0.0
        """Training seconds on the budget clock so far."""

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Count the time in the block as training time."""
        start = budget_clock(self.clock)
        try:
            yield
        finally:
            self.spent_s += budget_clock(self.clock) - start

    def progress(self, step: int) -> float:
        """The fraction of the budget spent at ``step`` (may exceed 1 by the last step), the same on every
        process: the largest over processes of the larger of the step and time fractions."""
        fractions = [0.0]
        if self.total_steps:
            fractions.append(step / self.total_steps)
        if self.minutes is not None:
            fractions.append(self.spent_s / (60 * self.minutes))
        if not distributed.is_distributed():  # no tensor, no device round trip: a plain number
            return max(fractions)
        mine = torch.tensor(max(fractions), dtype=torch.float64, device=self.device)
        return float(distributed.all_reduce_max(mine))


class BudgetPoints:
    """Evenly spaced points of the budget (``k / n`` for ``k < n``; the end has its own evaluation and
    checkpoint) at which evaluations and checkpoints fall due, each once; those at or before ``start`` (the
    progress a resumed run starts from) have passed."""

    def __init__(self, evaluations: int | None, checkpoints: int | None, start: float = 0.0) -> None:
        self._next = {kind: (1 + (math.floor(start * n + 1e-9) if n else 0), n)
                      for kind, n in (("evaluation", evaluations), ("checkpoint", checkpoints))}

    def _due(self, kind: str, progress: float) -> bool:
        k, n = self._next[kind]
        if n is None or k >= n or progress < k / n:
            return False
        while k < n and progress >= k / n:
            k += 1
        self._next[kind] = (k, n)
        return progress < 1.0

    def evaluation_due(self, progress: float) -> bool:
        return self._due("evaluation", progress)

    def checkpoint_due(self, progress: float) -> bool:
        return self._due("checkpoint", progress)
