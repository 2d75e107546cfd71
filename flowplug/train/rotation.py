"""The checkpoints of a run folder: ``checkpoints/step-<step>.pt`` rotated to the newest ``keep_last``, and
``best.pt``, the model with the best held-out score so far. Which files are kept, and which one a resume
reads, is decided here only.

Only *healthy* states are written (the trainer checks that the weights and the last evaluation are finite),
so rotation can never delete the newest checkpoint a diverged run could resume from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from flowplug.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["BEST", "latest_checkpoint", "load_latest", "remove_stale_temporaries", "save_rotating",
           "set_aside_after"]

BEST = "best.pt"
SUPERSEDED = "superseded"
_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def _step_files(folder: Path) -> list[Path]:
    """The step checkpoints of ``folder``, oldest step first (by the number, not the name)."""
    found = [p for p in folder.glob("step-*.pt") if _STEP_FILE.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_STEP_FILE.fullmatch(p.name).group(1)))


def latest_checkpoint(folder: Path) -> Path | None:
    """The highest-step checkpoint in ``folder``, if any."""
    found = _step_files(folder)
    return found[-1] if found else None


def load_latest(folder: Path, map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest *readable* step checkpoint of ``folder``: ``(path, state, notes)``, ``notes`` naming each
    newer file that was skipped as unreadable; None when there is no step checkpoint at all. Raises
    :class:`CheckpointError` when every one is unreadable."""
    notes = []
    for path in reversed(_step_files(folder)):
        try:
            return path, load_checkpoint(path, map_location), notes
        except CheckpointError as error:
            notes.append(f"skipped {path}: {error}")
    if notes:
        raise CheckpointError(f"no intact checkpoint in {folder}: " + "; ".join(notes))
    return None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that were killed before their rename; returns them."""
    stale = sorted(folder.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def set_aside_after(folder: Path, step: int) -> list[Path]:
    """Move the step checkpoints past ``step`` (a continuation a resume from an earlier checkpoint abandons)
    to ``folder/superseded/``, where rotation no longer sees them; returns their new paths."""
    moved = []
    for path in _step_files(folder):
        if int(_STEP_FILE.fullmatch(path.name).group(1)) > step:
            (folder / SUPERSEDED).mkdir(exist_ok=True)
            moved.append(path.rename(folder / SUPERSEDED / path.name))
    return moved


def save_rotating(state: dict[str, Any], folder: Path, step: int, *, keep_last: int, best: bool) -> Path:
    """Write ``state`` as ``folder/step-<step>.pt``, delete all but the ``keep_last`` newest step files, and
    also write it as ``best.pt`` when ``best``; returns the step file's path."""
    path = save_checkpoint(state, folder / f"step-{step:08d}.pt")
    for old in _step_files(folder)[:-keep_last]:
        old.unlink()
    if best:
        save_checkpoint(state, folder / BEST)
    return path
