"""What a run shows and leaves behind: metrics (CSV, TensorBoard), a progress bar, image grids.

All writers here act on rank 0 only (their methods are wrapped with lightning-utilities'
``rank_zero_only``), so the trainer calls them unconditionally in every process.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from flowplug.train.distributed import rank_zero_only, world_size
from flowplug.train.run_folder import RunFolder

__all__ = ["MAX_GRID_SIDE", "MIN_GRID_SIDE", "MetricsLogger", "Progress", "grid_zoom", "notify", "per_level_note",
           "run_report", "save_image_grid", "save_samples", "write_report"]


@rank_zero_only
def notify(message: str) -> None:
    """Tell the person at the console (standard error, rank 0) what the run did, e.g. what it resumed from."""
    print(f"flowplug: {message}", file=sys.stderr, flush=True)


class MetricsLogger:
    """Appends ``step, elapsed_s, split, metric, value`` rows to the run folder's ``metrics.csv``, and writes the
    same scalars as TensorBoard events when ``tensorboard`` is True, or None and the package is installed.

    ``after_step`` (a resume) first drops the rows of steps past it, which the resumed run writes again; the
    file is replaced atomically, so a process killed meanwhile leaves the old file, and unreadable rows (a
    blank line, a row cut by a kill) are dropped with the rest.
    """

    def __init__(self, folder: RunFolder, tensorboard: bool | None = None, after_step: int | None = None) -> None:
        self.path = folder.metrics
        self._writer = None
        installed = importlib.util.find_spec("tensorboard") is not None
        self.tensorboard = installed and tensorboard is not False
        """Whether TensorBoard events are written (not turned off, and installed)."""
        if rank_zero_only.rank != 0:
            return
        folder.root.mkdir(parents=True, exist_ok=True)
        if after_step is not None and self.path.exists():
            _keep_rows_up_to(self.path, after_step)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with self.path.open("w", newline="") as file:
                csv.writer(file).writerow(_HEADER)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(folder.tensorboard))
        elif tensorboard:
            notify("warning: tensorboard=True but the tensorboard package is not installed, so metrics go to "
                   "metrics.csv only (pip install tensorboard)")

    @rank_zero_only
    def log(self, step: int, elapsed: float, split: str, metrics: dict[str, float]) -> None:
        with self.path.open("a", newline="") as file:
            writer = csv.writer(file)
            for name, value in metrics.items():
                writer.writerow([step, f"{elapsed:.3f}", split, name, repr(float(value))])
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"{split}/{name}", value, step)

    def rows(self, step: int, split: str) -> dict[str, float]:
        """The metrics logged for ``step`` and ``split`` (``{}`` when none were)."""
        if not self.path.exists():
            return {}
        with self.path.open(newline="") as file:
            return {row[3]: float(row[4]) for row in csv.reader(file)
                    if len(row) == len(_HEADER) and row[0] == str(step) and row[2] == split}

    @rank_zero_only
    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


_HEADER = ["step", "elapsed_s", "split", "metric", "value"]


def _keep_rows_up_to(path: Path, step: int) -> None:
    """Rewrite ``metrics.csv`` with the rows of steps up to ``step`` (atomically: a temporary file renamed over
    it)."""
    with path.open(newline="") as file:
        rows = [row for row in csv.reader(file) if len(row) == len(_HEADER)]
    kept = [_HEADER] + [row for row in rows if row[0].isdigit() and int(row[0]) <= step]
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="") as file:
        csv.writer(file).writerows(kept)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


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


MIN_GRID_SIDE = 256
"""Pixels a saved grid has at least on each side by default: small images are upscaled to be readable."""
MAX_GRID_SIDE = 16384
"""Pixels a saved grid may have at most on a side (a larger ``zoom`` is refused)."""


def grid_zoom(grid_height: int, grid_width: int) -> int:
    """The smallest integer upscaling that makes a grid at least :data:`MIN_GRID_SIDE` pixels on each side."""
    return max(1, math.ceil(MIN_GRID_SIDE / min(grid_height, grid_width)))


@rank_zero_only
def save_image_grid(v: torch.Tensor, path: str | Path, columns: int | None = None, zoom: int | None = None) -> None:
    """Save images ``v`` (``(N, C, H, W)``, values in ``[0, 1]``) as one PNG grid.

    One or three channels are grey or RGB pictures; other channel counts show each image's
    channels stacked vertically in grey. The grid is upscaled ``zoom`` times (nearest neighbour, so
    pixels stay sharp squares); by default just enough for :data:`MIN_GRID_SIDE` pixels a side.
    """
    if zoom is not None and (not isinstance(zoom, int) or isinstance(zoom, bool) or zoom < 1):
        raise ValueError(f"zoom must be a positive integer, got {zoom!r}")
    if v.ndim != 4 or v.shape[0] == 0:
        raise ValueError(f"save_image_grid needs images (N, C, H, W) with N > 0, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{int((~torch.isfinite(v)).sum())} pixel value(s) of the images are not finite (NaN or "
                         "inf): nothing written")
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
    zoom = zoom or grid_zoom(*grid.shape[1:])
    if max(grid.shape[1:]) * zoom > MAX_GRID_SIDE:
        raise ValueError(f"zoom {zoom} would make a grid of {max(grid.shape[1:]) * zoom} pixels a side; at most "
                         f"{MAX_GRID_SIDE}")
    grid = grid.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def save_samples(v: torch.Tensor, path: str | Path, zoom: int | None = None, columns: int | None = None) -> None:
    """Save samples ``v`` as a grid (:func:`save_image_grid`, ``columns`` wide: a class-conditional model's
    samples of labels ``0, 1, …, K−1, 0, …`` in ``K`` columns show one class per column), leaving out samples
    with non-finite pixels (an unstable flow's inverse can overflow) and saying how many; nothing is written
    when none is finite."""
    finite = torch.isfinite(v.flatten(1)).all(1)
    if not finite.all():
        notify(f"{int((~finite).sum())} of {len(v)} samples have non-finite pixels and are left out of {path}")
    if finite.any():
        save_image_grid(v[finite], path, columns=columns if finite.all() else None, zoom=zoom)


def run_report(trainer: Any, last: dict[str, float], elapsed: float, steps_run: int,
               data_info: dict[str, Any]) -> dict[str, Any]:
    """The final report of a ``fit`` of ``trainer`` (a :class:`~flowplug.train.Trainer`), before evaluation."""
    budget = trainer.budget
    report: dict[str, Any] = {
        "model": (trainer.model.config or {}).get("type", type(trainer.model).__name__),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "device": str(trainer.device),
        "processes": world_size(),
        "precision": trainer.precision,
        "steps": trainer.step,
        "steps_this_run": steps_run,
        "skipped_steps": trainer.skipped_steps,
        "phase_starts": list(trainer.phase_starts),
        "train_time_s": round(elapsed, 3),
        "clock": trainer.config.clock,
        "budget_time_s": round(budget.spent_s, 3),
        "steps_per_s": round(steps_run / elapsed, 3) if elapsed > 0 else None,
        "final_train_loss": last.get("loss"),
        "final_train_bpd": last.get("bpd"),
        "data": data_info,
    }
    if trainer.parent is not None:
        report["grown_from"] = {key: trainer.parent.get(key) for key in ("checkpoint", "step", "sha256")}
    return report


@rank_zero_only
def write_report(report: dict[str, Any], folder: RunFolder) -> None:
    """The run folder's ``report.json`` and a readable ``report.txt``.

    ``report.txt`` leaves out values that do not apply (``None``, e.g. the training BPD under flow matching)
    and explains the per-level bits per dimension in one line.
    """
    folder.report_json.write_text(json.dumps(report, indent=2) + "\n")
    lines = []
    for key, value in report.items():
        if key == "curve":
            continue
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_fmt(v)}" for k, v in value.items() if v is not None]
            if "per_level_bpd" in value and "n_bins" in report.get("data", {}):
                lines.append("  " + per_level_note(report["data"]["n_bins"]))
        elif value is not None:
            lines.append(f"{key}: {_fmt(value)}")
    folder.report_txt.write_text("\n".join(lines) + "\n")


def per_level_note(n_bins: int) -> str:
    """One line on what ``per_level_bpd`` means, for data with ``n_bins`` levels."""
    constant = math.log2(n_bins)
    return (f"(per_level_bpd: each level's share of bpd after the constant log2(n_bins) = {constant:.4f} of "
            f"the whole image; they sum to bpd - {constant:.4f}, and a level is negative where its density "
            "exceeds 1, as for concentrated fine details)")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)
