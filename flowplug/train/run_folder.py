"""The layout of a run folder, in one place: ``config.json``, ``metrics.csv`` and TensorBoard events,
``samples/step-<step>-t<temperature>.png``, ``checkpoints/`` (see :mod:`flowplug.train.rotation`) and ``report.json``/
``report.txt``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowplug.train.distributed import rank_zero_only

__all__ = ["RunFolder"]


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
