"""Checkpoints: dicts of tensors and plain data, written atomically, read without running code.

A checkpoint holds everything to continue a run exactly or rebuild its model alone: the model's
``state_dict`` and ``config`` (a registry spec), optimiser, scheduler and EMA states, the step, the
RNG states, the trainer's config and the data's description. Writing goes to a temporary file in
the same folder, is flushed to disk, then renamed over the target and the folder itself
is flushed, so a process killed mid-write (or a full disk) leaves the previous file intact and the rename
survives a crash. Reading uses ``torch.load(..., weights_only=True)``, which refuses
any pickled object other than tensors and plain containers, so a checkpoint never runs code.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "CheckpointError",
    "build_model",
    "capture_rng",
    "load_checkpoint",
    "model_weights",
    "restore_rng",
    "save_checkpoint",
]

FORMAT = "flowplug-checkpoint-v1"
_REQUIRED = ("format", "model", "model_config", "step")


class CheckpointError(ValueError):
    """A checkpoint file that is unreadable, unsafe, truncated or not a flowplug checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (with ``"format"`` added) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({**state, "format": FORMAT}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (the rename) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; raises :class:`CheckpointError` naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain data, "
            f"which could execute code when unpickled ({str(error).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (truncated or corrupt?): {error}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a flowplug checkpoint (format {FORMAT})")
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the entries {missing}")
    return state


def build_model(state: dict[str, Any], *, use_ema: bool = False, match_dtype: bool = False) -> torch.nn.Module:
    """Rebuild a checkpoint's model through the registry and load its weights (:func:`model_weights`: the EMA
    copy's when ``use_ema`` and it has one). ``match_dtype`` first casts the model to the weights' floating dtype
    (e.g. float64), which loading would otherwise round to the model's default."""
    from flowplug.registry import build

    model = build(state["model_config"])
    weights = model_weights(state, use_ema=use_ema)
    if match_dtype:
        model.to(next(t.dtype for t in weights.values() if t.is_floating_point()))
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint weights do not fit its model config: {error}") from None
    return model


def model_weights(state: dict[str, Any], *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """A checkpoint's model weights: the EMA copy's (the weights its evaluations scored) when ``use_ema`` and
    it has one (``AveragedModel`` keys under ``module.``), else the trained weights."""
    ema = state.get("ema") if use_ema else None
    if not ema:
        return state["model"]
    prefix = "module."
    return {key[len(prefix):]: value for key, value in ema.items() if key.startswith(prefix)}


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and ``random``, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state is what is saved)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
