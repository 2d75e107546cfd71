"""Checkpoints: one typed record (:class:`Checkpoint`), written atomically, read without running code, migrated
from older format versions.

A checkpoint holds everything to continue a run exactly or rebuild its model alone: the model's weights and
``config`` (a registry spec), the optimiser and EMA states, the step, the phase of the training plan, the RNG
states, the trainer's config and the data's description. On disk it is a dict of tensors and plain data with
``"format"`` and ``"version"``; :meth:`Checkpoint.from_dict` brings every older version to the current one
(:data:`VERSION`) through :data:`MIGRATIONS`, so the rest of the package reads attributes only.

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed over the target and the
folder itself is flushed, so a process killed mid-write (or a full disk) leaves the previous file intact and the
rename survives a crash. Reading checks the zip archive's CRCs (a damaged byte anywhere is found) and uses
``torch.load(..., weights_only=True)``, which refuses any pickled object other than tensors and plain
containers, so a checkpoint never runs code.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointError",
    "build_model",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

FORMAT = "flowplug-checkpoint"
VERSION = 2
_FORMAT_V1 = "flowplug-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file that is unreadable, unsafe, truncated or not a flowplug checkpoint."""


@dataclass
class Checkpoint:
    """Everything a run saves. ``model`` holds the trained weights; ``ema`` the state of their moving average
    (``AveragedModel``, keys under ``module.``), whose weights evaluations score."""

    model_config: dict[str, Any]
    model: dict[str, torch.Tensor]
    step: int
    data: dict[str, Any] = field(default_factory=dict)
    """The training data's description (:meth:`flowplug.data.ImageData.info`, with the held-out split)."""
    trainer_config: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    phase: int = 0
    """The index of the training plan's phase the run is in."""
    phase_starts: list[int] = field(default_factory=lambda: [0])
    """The step at which each phase so far began."""
    skipped_steps: int = 0
    best_val_bpd: float | None = None
    total_steps: int | None = None
    schedule_segment: list[float] | None = None
    elapsed_s: float = 0.0
    resumes: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    """The evaluations at the budget's evaluation points so far (step, training seconds, BPD)."""
    parent: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    """The record of the recipe that built the model and options (:meth:`flowplug.recipes.RecipePlan.record`)."""
    rng: dict[str, Any] | None = None
    source: Path | None = field(default=None, compare=False, repr=False)
    """The file it was read from (not written to disk)."""

    def weights(self, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The model weights: the EMA copy's (the weights its evaluations scored) when ``use_ema`` and it has
        one, else the trained weights."""
        if not use_ema or not self.ema:
            return self.model
        prefix = "module."
        return {key[len(prefix):]: value for key, value in self.ema.items() if key.startswith(prefix)}

    def to_dict(self) -> dict[str, Any]:
        """The plain data written to disk, with the format and version."""
        return {"format": FORMAT, "version": VERSION,
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}}

    @classmethod
    def from_dict(cls, state: Any, source: str = "the checkpoint") -> Checkpoint:
        """The checkpoint of ``state`` as read from disk, migrated to :data:`VERSION`; raises
        :class:`CheckpointError` naming ``source`` and what is wrong."""
        if not isinstance(state, dict) or state.get("format") not in (FORMAT, _FORMAT_V1):
            raise CheckpointError(f"{source} is not a flowplug checkpoint (format {FORMAT})")
        state = dict(state)
        version = 1 if state.pop("format") == _FORMAT_V1 else state.pop("version", None)
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise CheckpointError(f"{source} has format version {version!r}; this flowplug reads versions 1 to "
                                  f"{VERSION} (a newer flowplug wrote it?)")
        for old in range(version, VERSION):
            state = MIGRATIONS[old](state)
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in state]
        if missing:
            raise CheckpointError(f"{source} lacks the entries {missing}")
        unknown = sorted(set(state) - names)
        if unknown:
            raise CheckpointError(f"{source} has unknown entries {unknown}")
        checkpoint = cls(**state)
        _check_types(checkpoint, source)
        _check_trainer_config(checkpoint, source)
        return checkpoint


def _check_types(checkpoint: Checkpoint, source: str) -> None:
    kinds = {"model_config": (dict,), "model": (dict,), "step": (int,), "data": (dict,), "phase": (int,),
             "phase_starts": (list,), "skipped_steps": (int,), "resumes": (list,),
             "trainer_config": (dict, type(None)), "parent": (dict, type(None))}
    for name, kind in kinds.items():
        value = getattr(checkpoint, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kind)
            raise CheckpointError(f"{source}: {name} should be a {expected}, got {type(value).__name__}")


def _check_trainer_config(checkpoint: Checkpoint, source: str) -> None:
    """The stored trainer options must make a valid :class:`~flowplug.train.config.TrainConfig` (every command
    that reads a checkpoint refuses a damaged or forged plan, not only a resume)."""
    from flowplug.train.config import TrainConfig

    if checkpoint.trainer_config is None:
        return
    try:
        TrainConfig.from_dict(dict(checkpoint.trainer_config))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: its trainer_config is not valid: {error}") from None


def _older_mrcnf_net(config: Any) -> Any:
    """Model configs of version 1 left MRCNF's net out when it was the then default ``conv_odenet``."""
    if isinstance(config, dict) and config.get("type") == "mrcnf" and "net" not in config:
        return {**config, "net": "conv_odenet"}
    return config


def _migrate_v1(state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 → 2: the likelihood phase options become a plan of phases, ``likelihood_from`` the phase
    record; the scheduler's state goes (rates are recomputed from the step); MRCNF's older default net is
    written out."""
    from flowplug.train.phases import migrate_phase_options, normalize_phases

    state = dict(state)
    state.pop("scheduler", None)
    config = state.get("trainer_config")
    started = state.pop("likelihood_from", None)
    if started is None and config and config.get("likelihood_after") is not None \
            and state.get("step", 0) >= config["likelihood_after"]:
        started = config["likelihood_after"]  # runs of before the phase was recorded switched at that step
    if config is not None:
        config = migrate_phase_options(config)
        if config.get("phases") is not None:  # stored validated, as a version-2 config holds it
            config["phases"] = normalize_phases(config["phases"], None)
            config["objective"] = config["phases"][0]["objective"]
        state["trainer_config"] = config
    if started is not None:
        state["phase"], state["phase_starts"] = 1, [0, int(started)]
    state["model_config"] = _older_mrcnf_net(state.get("model_config"))
    parent = state.get("parent")
    if isinstance(parent, dict):
        state["parent"] = {**parent, "model_config": _older_mrcnf_net(parent.get("model_config"))}
    return state


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_v1}
"""``MIGRATIONS[v]`` turns the plain data of version ``v`` into version ``v + 1``."""


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint.to_dict(), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except RuntimeError as error:  # torch.save reports a full disk this way at some sizes
        Path(tmp).unlink(missing_ok=True)
        raise OSError(f"could not write the checkpoint {str(path)!r} (disk full?): {error}") from None
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint safely; raises :class:`CheckpointError` naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    _check_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):  # not a refused object: damaged bytes
            raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (truncated or corrupt?): "
                                  f"{str(error).splitlines()[0]}") from None
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain data, "
            f"which could execute code when unpickled ({str(error).splitlines()[0]})"
        ) from None
    except Exception as error:  # torch's unpickler raises many kinds on damaged bytes (IndexError, KeyError, ...)
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (truncated or corrupt?): {type(error).__name__}: {error}"
        ) from None
    checkpoint = Checkpoint.from_dict(state, repr(str(path)))
    checkpoint.source = path
    return checkpoint


def _check_archive(path: Path) -> None:
    """Check every member's CRC of a zip-format checkpoint (torch's format since 1.6): a damaged byte in any
    tensor is found here, not as wrong numbers later."""
    if not zipfile.is_zipfile(path):
        return  # torch.load reports what it is
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (truncated or corrupt?): {error}") from None
    if damaged is not None:
        raise CheckpointError(f"{str(path)!r} is damaged: the CRC of its entry {damaged!r} does not match "
                              "(a changed byte on disk?)")


def build_model(checkpoint: Checkpoint, *, use_ema: bool = False, match_dtype: bool = False) -> torch.nn.Module:
    """Rebuild a checkpoint's model through the registry and load its weights (:meth:`Checkpoint.weights`: the
    EMA copy's when ``use_ema`` and it has one). ``match_dtype`` first casts the model to the weights' floating
    dtype (e.g. float64), which loading would otherwise round to the model's default."""
    from flowplug.registry import build

    model = build(checkpoint.model_config)
    weights = checkpoint.weights(use_ema=use_ema)
    if match_dtype:
        model.to(next(t.dtype for t in weights.values() if t.is_floating_point()))
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint weights do not fit its model config: {error}") from None
    return model


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
