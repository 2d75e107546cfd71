"""What a run shows and leaves behind: metrics (CSV, TensorBoard), a progress bar, image grids.

All writers here act on rank 0 only (their methods are wrapped with lightning-utilities'
``rank_zero_only``), so the trainer calls them unconditionally in every process.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from flowplug.train.distributed import rank_zero_only

__all__ = ["MetricsLogger", "Progress", "notify", "save_image_grid", "write_report"]


@rank_zero_only
def notify(message: str) -> None:
    """Tell the person at the console (standard error, rank 0) what the run did, e.g. what it resumed from."""
    print(f"flowplug: {message}", file=sys.stderr, flush=True)


class MetricsLogger:
    """Appends ``step, elapsed_s, split, metric, value`` rows to ``metrics.csv`` in ``folder``, and
    writes the same scalars to TensorBoard (``folder/tensorboard``) when it is installed.

    ``after_step`` (a resume) first drops the rows of steps past it, which the resumed run writes again.
    """

    def __init__(self, folder: Path, tensorboard: bool = True, after_step: int | None = None) -> None:
        self.path = folder / "metrics.csv"
        self._writer = None
        if rank_zero_only.rank != 0:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if after_step is not None and self.path.exists():
            with self.path.open(newline="") as file:
                rows = list(csv.reader(file))
            kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= after_step]
            with self.path.open("w", newline="") as file:
                csv.writer(file).writerows(kept)
        if not self.path.exists():
            with self.path.open("w", newline="") as file:
                csv.writer(file).writerow(["step", "elapsed_s", "split", "metric", "value"])
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(folder / "tensorboard"))

    @rank_zero_only
    def log(self, step: int, elapsed: float, split: str, metrics: dict[str, float]) -> None:
        with self.path.open("a", newline="") as file:
            writer = csv.writer(file)
            for name, value in metrics.items():
                writer.writerow([step, f"{elapsed:.3f}", split, name, repr(float(value))])
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"{split}/{name}", value, step)

    @rank_zero_only
    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Progress:
    """A tqdm bar over optimiser steps showing loss and BPD (tqdm adds steps/s and the ETA)."""

    def __init__(self, total: int | None, initial: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                         disable=not enabled or rank_zero_only.rank != 0)

    def update(self, metrics: dict[str, float]) -> None:
        self._bar.set_postfix({k: f"{metrics[k]:.4f}" for k in ("loss", "bpd") if k in metrics},
                              refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


@rank_zero_only
def save_image_grid(v: torch.Tensor, path: Path, columns: int | None = None) -> None:
    """Save images ``v`` (``(N, C, H, W)``, values in ``[0, 1]``) as one PNG grid.

    One or three channels are grey or RGB pictures; other channel counts show each image's
    channels stacked vertically in grey.
    """
    from PIL import Image

    if v.shape[1] not in (1, 3):
        v = v.reshape(v.shape[0], 1, -1, v.shape[-1])
    n, channels, height, width = v.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pad = 1
    grid = torch.zeros(channels, rows * (height + pad) + pad, columns * (width + pad) + pad)
    for i, image in enumerate(v.detach().float().cpu().clamp(0, 1)):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[:, top:top + height, left:left + width] = image
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@rank_zero_only
def write_report(report: dict[str, Any], folder: Path) -> None:
    """``report.json`` and a readable ``report.txt`` in ``folder``."""
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_fmt(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_fmt(value)}")
    (folder / "report.txt").write_text("\n".join(lines) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)
