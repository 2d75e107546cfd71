"""The checkpoints of a run folder: ``checkpoints/step-<step>.pt`` rotated to the newest ``keep_last``, and
``best.pt``, the model with the best held-out score so far. Which files are kept is decided here only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowplug.train.checkpoint import save_checkpoint

__all__ = ["BEST", "latest_checkpoint", "save_rotating"]

BEST = "best.pt"


def _step_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("step-*.pt"))


def latest_checkpoint(folder: Path) -> Path | None:
    """The highest-step checkpoint in ``folder``, if any."""
    found = _step_files(folder)
    return found[-1] if found else None


def save_rotating(state: dict[str, Any], folder: Path, step: int, *, keep_last: int, best: bool) -> Path:
    """Write ``state`` as ``folder/step-<step>.pt``, delete all but the ``keep_last`` newest step files, and
    also write it as ``best.pt`` when ``best``; returns the step file's path."""
    path = save_checkpoint(state, folder / f"step-{step:08d}.pt")
    for old in _step_files(folder)[:-keep_last]:
        old.unlink()
    if best:
        save_checkpoint(state, folder / BEST)
    return path
