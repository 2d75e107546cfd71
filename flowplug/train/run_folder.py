"""The run folder, in one place: every file name a run writes, and the rules for its checkpoints.

Layout::

    config.json                 the run's settings (model spec, trainer options, data, recipe, resumes)
    metrics.csv                 step, elapsed_s, split, metric, value
    tensorboard/                the same scalars as TensorBoard events (when tensorboard is installed)
    report.json, report.txt     the final report
    samples/step-<step>-t<temperature>.png, samples/<checkpoint>-t<temperature>.png
    checkpoints/step-<step>.pt  the newest ``keep_last`` step checkpoints
    checkpoints/best.pt         the checkpoint with the best held-out score so far
    checkpoints/superseded/     step checkpoints past a step a resume went back to

Only *healthy* states are written (the trainer checks that the weights and the last evaluation are finite), so
rotation never deletes the newest checkpoint a diverged run could resume from.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowplug.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from flowplug.train.distributed import rank_zero_only

__all__ = ["RunFolder"]

_STEP_FILE = re.compile(r"step-(\d+)\.pt")
_STEP_SAMPLES = re.compile(r"step-\d+-t[^/]*\.png")


@dataclass(frozen=True)
class RunFolder:
    """The paths of the run folder ``root``, its checkpoint rotation and the one writer of ``config.json``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- names ------------------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_txt(self) -> Path:
        return self.root / "report.txt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        """``checkpoints/best.pt``."""
        return self.checkpoints / "best.pt"

    @property
    def superseded(self) -> Path:
        return self.checkpoints / "superseded"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.pt"

    def samples(self, step: int, temperature: float) -> Path:
        """Where the image grid of ``step``, drawn at ``temperature``, goes."""
        return self.root / "samples" / f"step-{step:08d}-t{temperature:g}.png"

    @staticmethod
    def samples_of(checkpoint: Path, temperature: float, guidance: float = 0.0) -> Path:
        """Where samples of ``checkpoint`` go: ``<run>/samples/<checkpoint>-t<temperature>.png`` beside the run's
        own grids when the checkpoint lies in a run folder's ``checkpoints/``, else a ``samples/`` folder beside
        the checkpoint; guided samples' names end in ``-g<guidance>``."""
        folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        guided = f"-g{guidance:g}" if guidance else ""
        return folder / "samples" / f"{checkpoint.stem}-t{temperature:g}{guided}.png"

    # -- checkpoints ------------------------------------------------------------------------------------------
    def step_checkpoints(self) -> list[Path]:
        """The step checkpoints, oldest step first (by the number, not the name)."""
        found = [p for p in self.checkpoints.glob("step-*.pt") if _STEP_FILE.fullmatch(p.name)]
        return sorted(found, key=lambda p: int(_STEP_FILE.fullmatch(p.name).group(1)))

    def latest(self) -> Path | None:
        """The highest-step checkpoint, if any."""
        found = self.step_checkpoints()
        return found[-1] if found else None

    def load_latest(self, map_location: str | torch.device = "cpu"
                    ) -> tuple[Path, Checkpoint, list[str]] | None:
        """The newest *readable* step checkpoint: ``(path, checkpoint, notes)``, ``notes`` naming each newer
        file skipped as unreadable; None when there is no step checkpoint at all. Raises
        :class:`CheckpointError` when every one is unreadable."""
        notes = []
        for path in reversed(self.step_checkpoints()):
            try:
                return path, load_checkpoint(path, map_location), notes
            except CheckpointError as error:
                notes.append(f"skipped {path}: {error}")
        if notes:
            raise CheckpointError(f"no intact checkpoint in {self.checkpoints}: " + "; ".join(notes))
        return None

    def save_rotating(self, checkpoint: Checkpoint, *, keep_last: int, best: bool) -> Path:
        """Write ``checkpoint`` as ``step-<step>.pt``, delete all but the ``keep_last`` newest step files, and
        also write it as ``best.pt`` when ``best``; returns the step file's path.

        ``best.pt`` is written first: a process killed between the two writes then leaves no step file newer than
        ``best.pt``, so a resume (which continues from the newest step file) evaluates that step again and writes
        ``best.pt`` again, instead of carrying a best score whose ``best.pt`` was never written."""
        if best:
            save_checkpoint(checkpoint, self.best)
        path = save_checkpoint(checkpoint, self.step_checkpoint(checkpoint.step))
        for old in self.step_checkpoints()[:-keep_last]:
            old.unlink()
        return path

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files of checkpoint writes killed before their rename; returns them."""
        stale = sorted(self.checkpoints.glob(".*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def set_aside_after(self, step: int) -> list[Path]:
        """Move the step checkpoints past ``step`` (a continuation a resume from an earlier checkpoint abandons)
        to ``superseded/``, where rotation no longer sees them; returns their new paths."""
        moved = []
        for path in self.step_checkpoints():
            if int(_STEP_FILE.fullmatch(path.name).group(1)) > step:
                self.superseded.mkdir(exist_ok=True)
                moved.append(path.rename(self.superseded / path.name))
        return moved

    # -- the folder -------------------------------------------------------------------------------------------
    @rank_zero_only
    def write_config(self, config: dict[str, Any]) -> None:
        """Write the run's settings as ``config.json`` (rank 0 only), creating the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config, indent=2) + "\n")

    def holds_run(self) -> bool:
        """Whether a run wrote here: a ``config.json`` of flowplug's or a step checkpoint."""
        if self.step_checkpoints() or self.best.exists():
            return True
        try:
            written = json.loads(self.config.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(written, dict) and {"trainer", "model"} <= set(written)

    def claim(self, overwrite: bool) -> None:
        """Make sure a new run does not mix with another: a folder holding a run is refused unless
        ``overwrite``, which deletes that run's files (:meth:`written_files`) and nothing else."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise ValueError(f"run folder {str(self.root)!r} is a file, not a folder")
        if not self.holds_run():
            return
        if not overwrite:
            raise ValueError(
                f"run folder {str(self.root)!r} already holds a run; resume it (--resume, "
                "fit(resume=True)), replace it (--overwrite, fit(overwrite=True)) or choose another folder")
        self._delete_run()

    def written_files(self) -> list[Path]:
        """The files and folders a run writes here (those present), and only those."""
        fixed = [self.config, self.metrics, self.report_json, self.report_txt, self.tensorboard, self.best]
        found = [p for p in fixed if p.exists() or p.is_symlink()]
        found += self.step_checkpoints() + sorted(self.checkpoints.glob(".*.tmp"))
        if self.superseded.is_dir() and not self.superseded.is_symlink():
            found += [p for p in self.superseded.glob("step-*.pt") if _STEP_FILE.fullmatch(p.name)]
        samples = self.root / "samples"
        if samples.is_dir() and not samples.is_symlink():
            found += [p for p in samples.glob("step-*.png") if _STEP_SAMPLES.fullmatch(p.name)]
        return found

    @rank_zero_only
    def _delete_run(self) -> None:
        for path in self.written_files():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
