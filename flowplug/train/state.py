"""A trainer's state on disk: the checkpoint it writes, the checkpoint it continues from, and what a resume may
change.

Options a resume gets take effect as they are, are applied to the restored optimiser and schedule
(:data:`APPLIED`), or would make the continuation a different run and are refused (:data:`REFUSED`). Every
change is recorded (``config.json`` and the checkpoint's ``resumes``); none is ever silently ignored.
"""

from __future__ import annotations

import json
import math
import shlex
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flowplug.data import ImageData
from flowplug.train.checkpoint import Checkpoint, CheckpointError, capture_rng, load_checkpoint, restore_rng
from flowplug.train.distributed import rank_zero_only, world_size
from flowplug.train.feedback import notify
from flowplug.train.labels import check_labels_fit
from flowplug.train.run_folder import RunFolder
from flowplug.train.schedule import extension_segment
from flowplug.train.splits import RecordedData

if TYPE_CHECKING:
    from flowplug.train.config import TrainConfig
    from flowplug.train.trainer import Trainer

__all__ = ["APPLIED", "REFUSED", "changed_options", "checkpoint_of", "load_into", "resume", "resume_point", "save"]

REFUSED = ("batch_size", "seed", "objective", "phases", "precision", "ema_decay", "warmup_steps", "schedule")
"""Options a resume refuses to change: the data order, noise, loss, plan, number format or EMA would no longer
be those the checkpoint was trained with."""
APPLIED = ("lr", "weight_decay")
"""Options a resume applies to the restored optimiser (the base rate; the schedule's shape is kept)."""


def changed_options(saved: dict[str, Any], config: TrainConfig) -> dict[str, list[Any]]:
    """``{option: [checkpoint's value, new value]}`` for every option that differs from the checkpoint's;
    raises ``ValueError`` naming the options in :data:`REFUSED` that differ."""
    current = config.to_dict()
    changes = {key: [saved.get(key), value] for key, value in current.items()
               if key in saved and saved[key] != value}
    refused = [key for key in REFUSED if key in changes]
    if refused:
        details = ", ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        raise ValueError(f"cannot resume with a changed {details}: the continuation would no longer be "
                         "the run the checkpoint belongs to; keep the checkpoint's values or start a new run "
                         "in another folder")
    return changes


def check_data(trainer: Trainer, train: ImageData, val: ImageData | None = None) -> dict[str, Any]:
    """The description of ``train`` for checkpoints, after checking that the model and config fit it and that
    ``val`` holds images of the same shape and ``n_bins`` (bits per dimension of other bins would not be
    comparable); sets the trainer's step budget from an epoch budget."""
    cfg, model = trainer.config, trainer.model
    if val is not None and (val.image_shape, val.n_bins) != (train.image_shape, train.n_bins):
        raise ValueError(f"the validation data ({val.name}: images {val.image_shape}, n_bins={val.n_bins}) must "
                         f"match the training data ({train.name}: images {train.image_shape}, "
                         f"n_bins={train.n_bins})")
    if tuple(model.image_shape) != train.image_shape:
        raise ValueError(f"the model expects images of shape {tuple(model.image_shape)}, "
                         f"the data has {train.image_shape}")
    check_labels_fit(model, train)
    warp = model.bin_warp
    if warp is not None and warp.n_bins != train.n_bins:
        raise ValueError(f"the model's bin_warp is for n_bins={warp.n_bins} but the data has "
                         f"n_bins={train.n_bins}; build the model with bin_warp={{'n_bins': {train.n_bins}}}")
    if cfg.batch_size % (world_size() * cfg.accumulation):
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by processes x "
                         f"accumulation = {world_size()} x {cfg.accumulation}")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(train)} training images")
    if cfg.epochs is not None:
        by_epochs = math.ceil(cfg.epochs * steps_per_epoch)
        trainer.total_steps = min(by_epochs, cfg.steps or by_epochs)
    return train.info()


def run_config(trainer: Trainer, data_info: dict[str, Any]) -> dict[str, Any]:
    """What ``config.json`` records of the run."""
    logger = trainer._logger
    return {
        "trainer": {**trainer.config.to_dict(), "tensorboard": logger.tensorboard if logger else False},
        "model": trainer.model.config, "data": data_info,
        **({} if trainer.recipe is None else {"recipe": trainer.recipe}),
        "device": str(trainer.device), "precision": trainer.precision, "processes": world_size(),
        "resumes": trainer.resumes,
        **({} if trainer.parent is None else {"parent": trainer.parent}),
    }


def checkpoint_of(trainer: Trainer, data_info: dict[str, Any]) -> Checkpoint:
    """The trainer's state as a :class:`Checkpoint`."""
    return Checkpoint(
        model_config=trainer.model.config, model=trainer.model.state_dict(), step=trainer.step, data=data_info,
        trainer_config=trainer.config.to_dict(), ema=trainer.ema.state_dict() if trainer.ema is not None else None,
        optimizer=trainer.optimizer.state_dict(), phase=trainer.phase, phase_starts=list(trainer.phase_starts),
        skipped_steps=trainer.skipped_steps, best_val_bpd=trainer.best_val_bpd, total_steps=trainer.total_steps,
        schedule_segment=list(trainer.segment) if trainer.segment is not None else None,
        elapsed_s=trainer.elapsed(), resumes=trainer.resumes, curve=list(trainer.curve), parent=trainer.parent,
        recipe=trainer.recipe, rng=capture_rng(),
    )


def load_into(trainer: Trainer, checkpoint: Checkpoint, data_info: dict[str, Any]) -> None:
    """Continue ``trainer`` from ``checkpoint``; a model or data that do not match raise CheckpointError."""
    if checkpoint.model_config != trainer.model.config:
        raise CheckpointError(f"the checkpoint's model config {checkpoint.model_config} "
                              f"differs from this model's {trainer.model.config}")
    for key in ("n_bins", "image_shape", "split"):
        saved, given = checkpoint.data.get(key), data_info.get(key)
        if key == "split" and isinstance(saved, dict) and isinstance(given, dict):  # versions without fingerprints
            saved, given = ({k: d[k] for k in saved.keys() & given.keys()} for d in (saved, given))
        if saved is not None and given is not None and saved != given:
            raise CheckpointError(f"the checkpoint was trained on data with {key}={checkpoint.data.get(key)}, "
                                  f"this data has {data_info.get(key)}")
    if checkpoint.phase >= len(trainer.config.phases):
        raise CheckpointError(f"the checkpoint is in phase {checkpoint.phase + 1} of a plan this config's "
                              f"{len(trainer.config.phases)} phase(s) do not reach")
    try:
        trainer.model.load_state_dict(checkpoint.model)
        if checkpoint.optimizer is not None:
            trainer.optimizer.load_state_dict(checkpoint.optimizer)
        trainer.ensure_ema()
        if trainer.ema is not None and checkpoint.ema is not None:
            trainer.ema.load_state_dict(checkpoint.ema)
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"the checkpoint does not fit this model: {error}") from None
    trainer.step = checkpoint.step
    trainer.skipped_steps = checkpoint.skipped_steps
    trainer.best_val_bpd = checkpoint.best_val_bpd
    trainer.phase, trainer.phase_starts = checkpoint.phase, list(checkpoint.phase_starts)
    trainer.apply_phase_levels()
    segment = checkpoint.schedule_segment
    trainer.segment = (int(segment[0]), float(segment[1])) if segment is not None else None
    trainer.elapsed_before = float(checkpoint.elapsed_s)
    trainer.resumes, trainer.curve = list(checkpoint.resumes), list(checkpoint.curve)
    trainer.parent = checkpoint.parent
    trainer.recipe = trainer.recipe or checkpoint.recipe
    if checkpoint.rng is not None:
        restore_rng(checkpoint.rng)
    trainer._apply_rates()


def resume_point(source: bool | str | Path | Checkpoint, folder: RunFolder | None,
                 map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """The checkpoint a resume continues from, read once: ``source`` itself (a :class:`Checkpoint`), the file it
    names, or for True the newest intact one in ``folder`` (saying which newer files were skipped as unreadable);
    None when the folder holds no checkpoint."""
    if isinstance(source, Checkpoint):
        return source
    if source is not True:
        return load_checkpoint(source, map_location)
    if folder is None:
        raise ValueError("resume=True continues the run in out_dir; give out_dir or a checkpoint path")
    found = folder.load_latest(map_location)
    if found is None:
        return None
    for note in found[2]:
        notify(note)
    return found[1]


def resume(trainer: Trainer, source: bool | str | Path | Checkpoint, data_info: dict[str, Any]) -> None:
    """Continue from ``source`` (see :func:`resume_point`), applying and recording changed options; says on the
    console what it resumed from."""
    folder = trainer.folder
    if folder is not None:
        for path in folder.remove_stale_temporaries():
            notify(f"removed {path}, left by a write that was interrupted")
    checkpoint = resume_point(source, folder, trainer.device)
    if checkpoint is None:
        notify(f"no checkpoint in {folder.checkpoints} to resume from; starting a new run")
        torch.manual_seed(trainer.config.seed)  # as a new run does: the same run as without --resume
        return
    path = checkpoint.source
    load_into(trainer, checkpoint, data_info)
    changes = changed_options(checkpoint.trainer_config or {}, trainer.config)
    old_total = checkpoint.total_steps
    trainer.segment = extension_segment(trainer.config, trainer.step, old_total, trainer.total_steps,
                                        trainer.segment)
    trainer._apply_rates()
    record: dict[str, Any] = {"step": trainer.step, "from": str(path), "changed": changes}
    if old_total != trainer.total_steps:
        record["schedule_segment"] = list(trainer.segment) if trainer.segment is not None else None
    trainer.resumes.append(record)
    if folder is not None:
        _set_aside(trainer, trainer.step)
    changed = "; changed " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()) \
        if changes else ""
    notify(f"resumed from {path} at step {trainer.step}{changed}")
    if trainer.total_steps is not None and trainer.step >= trainer.total_steps and trainer.config.minutes is None:
        notify(f"the step budget ({trainer.total_steps}) is already spent: nothing to train; give a larger budget "
               "(--steps, --epochs or --minutes) to continue")
        _keep_saved_rates(trainer, checkpoint)


def _keep_saved_rates(trainer: Trainer, checkpoint: Checkpoint) -> None:
    """Give the optimiser back the rates it was saved with, which no step will replace: a finished run that is
    resumed (after a kill during its final evaluation or report) then saves the checkpoint it was saved as."""
    saved = (checkpoint.optimizer or {}).get("param_groups", [])
    for group, stored in zip(trainer.optimizer.param_groups, saved, strict=False):
        group.update({key: stored[key] for key in ("lr", "weight_decay") if key in stored})


@rank_zero_only
def _set_aside(trainer: Trainer, step: int) -> None:
    moved = trainer.folder.set_aside_after(step)
    if moved:
        notify(f"moved {len(moved)} checkpoint(s) past step {step} to {moved[0].parent}: "
               "the continuation starts from the resumed step")


def healthy(trainer: Trainer) -> bool:
    """Whether the state is one to resume from: the last step and the last evaluation were finite and so are the
    weights (and EMA weights). Weights that were finite but gave non-finite steps are not saved, so rotation
    keeps the checkpoints from before a divergence began."""
    if trainer._bad_run or not trainer._last_eval_finite:
        return False
    tensors = list(trainer.model.parameters())
    if trainer.ema is not None:
        tensors += list(trainer.ema.module.parameters())
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def resume_hint(trainer: Trainer, advice: str = " after lowering the learning rate") -> str:
    """Which checkpoint a stopped run can be resumed from, and the command that does it (then ``advice``)."""
    folder = trainer.folder
    if folder is None:
        return "no run folder was given, so no checkpoint was written"
    good = folder.latest() or (folder.best if folder.best.exists() else None)
    if good is None:
        return "no checkpoint was written yet"
    data, note = _data_flags(folder)
    return (f"the newest good checkpoint is {good}; continue with `flowplug train --out "
            f"{shlex.quote(str(folder.root))} --resume {shlex.quote(str(good))}{data}`{note} "
            f"(or fit(..., resume={str(good)!r})){advice}")


_TORCHVISION = ("cifar10", "mnist")


def _data_flags(folder: RunFolder) -> tuple[str, str]:
    """The ``flowplug train`` flags that name the run's training data (from the run's ``config.json``; a resume
    without them loads the same data, so they only spell it out), and a note on what the command cannot name."""
    try:
        recorded = RecordedData.of(json.loads(folder.config.read_text())["data"])
    except (OSError, ValueError, KeyError, TypeError):
        return "", " (with the --data the run was trained on)"
    flags = "" if recorded.source == "digits" else f" --data {shlex.quote(recorded.source)}"
    flags += (" --channels 1" if recorded.channels == 1 else "") + (f" --size {recorded.size}" if recorded.size else "")
    note = " with the --data-root it was trained with" if recorded.source in _TORCHVISION else ""
    return flags, note


@rank_zero_only
def save(trainer: Trainer, data_info: dict[str, Any], val_bpd: float | None) -> None:
    """Write a rotating checkpoint (and ``best.pt`` when ``val_bpd`` is the best so far), if the state is
    healthy."""
    if not healthy(trainer):
        warnings.warn(f"step {trainer.step}: no checkpoint written, the last step, the last evaluation or the "
                      f"weights are not finite; {resume_hint(trainer)}", stacklevel=2)
        return
    best = val_bpd is not None and val_bpd == trainer.best_val_bpd
    trainer.folder.save_rotating(checkpoint_of(trainer, data_info), keep_last=trainer.config.keep_last, best=best)


def save_on_interrupt(trainer: Trainer, data_info: dict[str, Any]) -> None:
    """On Ctrl-C: save the steps since the last checkpoint and say how to continue."""
    if trainer.folder is None or trainer.step == 0:
        return
    save(trainer, data_info, None)
    notify(f"interrupted at step {trainer.step}; {resume_hint(trainer, '')}")
