"""The layout of a run folder, in one place: ``config.json``, ``metrics.csv`` and TensorBoard events,
``samples/step-<step>-t<temperature>.png``, ``checkpoints/`` (see :mod:`flowplug.train.rotation`) and ``report.json``/
``report.txt``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowplug.train.distributed import rank_zero_only

__all__ = ["RunFolder"]

_WRITTEN = ("config.json", "metrics.csv", "report.json", "report.txt", "checkpoints", "samples", "tensorboard")
"""The entries a run writes into its folder (and ``overwrite`` deletes)."""


@dataclass(frozen=True)
class RunFolder:
    """Paths of the run folder ``root`` and the one writer of its ``config.json``."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def samples(self, step: int, temperature: float) -> Path:
        """Where the image grid of ``step``, drawn at ``temperature``, goes."""
        return self.root / "samples" / f"step-{step:08d}-t{temperature:g}.png"

    @rank_zero_only
    def write_config(self, config: dict[str, Any]) -> None:
        """Write the run's settings as ``config.json`` (rank 0 only), creating the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def claim(self, overwrite: bool) -> None:
        """Make sure a new run does not mix with another: a folder holding anything is refused unless
        ``overwrite``, which deletes the previous run's entries (:data:`_WRITTEN`) and only those."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise ValueError(f"run folder {str(self.root)!r} is a file, not a folder")
        if not any(self.root.iterdir()):
            return
        if not overwrite:
            raise ValueError(
                f"run folder {str(self.root)!r} already holds a run; resume it (--resume, "
                "fit(resume=True)), replace it (--overwrite, fit(overwrite=True)) or choose another folder")
        self._delete_run()

    @rank_zero_only
    def _delete_run(self) -> None:
        for name in _WRITTEN:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
