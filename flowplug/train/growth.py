"""Progressive training: a trained multi-resolution model grown by a finer level for images twice the size.

:func:`load_parent` reads a trained :class:`~flowplug.models.mrcnf.MRCNF` from a checkpoint (or the run folder
holding it), checks that the new data are exactly twice its images' size with the same channels and ``n_bins``,
and returns it with a record of it; :meth:`~flowplug.models.mrcnf.MRCNF.grow` then adds the finer level. The
trainer keeps that record in the grown run's checkpoints, ``config.json`` and report, and a resumed run carries
it on, so every model says which checkpoint (path, step, content hash, per-level config) its old levels came
from, and the parent's own record names its parent in turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowplug.data import ImageData
from flowplug.models.mrcnf import MRCNF
from flowplug.train.checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint
from flowplug.train.run_folder import RunFolder

__all__ = ["load_parent", "parent_checkpoint"]


def parent_checkpoint(source: str | Path) -> tuple[Path, Checkpoint]:
    """``(path, state)`` of the checkpoint ``source`` names: a checkpoint file, or a run folder, whose newest
    intact step checkpoint is taken (the one ``--resume`` continues from)."""
    path = Path(source)
    if path.is_file():
        return path, load_checkpoint(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is neither a checkpoint file nor a run folder")
    found = RunFolder(path).load_latest()
    if found is None:
        raise FileNotFoundError(f"run folder {str(path)!r} holds no step checkpoint in checkpoints/")
    return found[0], found[1]


def load_parent(
    source: str | Path, data: ImageData, *, use_ema: bool = True
) -> tuple[MRCNF, dict[str, Any]]:
    """The trained model of checkpoint ``source`` (see :func:`parent_checkpoint`), checked to grow onto
    ``data``, and the record of it that the grown run keeps; grow it with :meth:`flowplug.models.mrcnf.MRCNF.grow`.

    The model takes the checkpoint's EMA weights (the ones its evaluations scored) when ``use_ema`` and it has
    them, in their dtype. ``data`` must hold images of exactly twice the parent's height and width, with its
    channels and ``n_bins`` (``ValueError`` naming both otherwise); a checkpoint of another kind of model raises
    :class:`~flowplug.train.checkpoint.CheckpointError`.
    """
    path, state = parent_checkpoint(source)
    config = state.model_config
    kind = config.get("type") if isinstance(config, Mapping) else None
    parent = build_model(state, use_ema=use_ema, match_dtype=True) if kind is not None else None
    if not isinstance(parent, MRCNF):
        raise CheckpointError(f"{str(path)!r} holds a {kind or 'non-rebuildable'} model; only a multi-resolution "
                              "model (mrcnf) can grow a finer level")
    channels, height, width = parent.image_shape
    n_bins = state.data.get("n_bins")
    wanted = (channels, 2 * height, 2 * width)
    if (data.image_shape, data.n_bins) != (wanted, n_bins):
        raise ValueError(f"cannot grow {str(path)!r} (images {parent.image_shape}, n_bins={n_bins}) on "
                         f"{data.name} (images {data.image_shape}, n_bins={data.n_bins}): growth needs "
                         f"images {wanted} with n_bins={n_bins}")
    record = {
        "checkpoint": str(path.resolve()),
        "sha256": _sha256(path),
        "step": state.step,
        "weights": "ema" if use_ema and state.ema else "trained",
        "best_val_bpd": state.best_val_bpd,
        "data": state.data,
        "model_config": config,
        "trainer_config": state.trainer_config,
        "levels": "the parent's level s is level s + 1 of the grown model; level 0 is new",
        "parent": state.parent,
    }
    return parent, record


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
