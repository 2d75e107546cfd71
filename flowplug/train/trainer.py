"""The one training loop for every flowplug model: fit, evaluate, sample, checkpoint, resume.

A model is a :class:`~flowplug.FlowModel` (the contract: ``log_prob``, ``sample`` and defaults for the rest)
whose ``config`` is a registry spec, so checkpoints can rebuild it. Images arrive as integers
(:class:`flowplug.data.ImageData`) and become a dequantised :class:`~flowplug.data.Batch` once per pixel per
step (:mod:`flowplug.train.batches`); the loss is a registered objective (:mod:`flowplug.train.objectives`) plus
the extra terms components contribute (:mod:`flowplug.losses`). One process, one GPU, or many processes under
``torchrun`` (DDP) run the same code. Settings: :mod:`~flowplug.train.config`; weights' average:
:mod:`~flowplug.train.ema`; scoring: :mod:`~flowplug.train.evaluation`; files: :mod:`~flowplug.train.run_folder`
and :mod:`~flowplug.train.rotation`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from flowplug.cnf.solver import ODESolverError
from flowplug.data import Batch, ImageData
from flowplug.losses import collect_extra_losses
from flowplug.models.base import FlowModel
from flowplug.train import distributed
from flowplug.train.batches import NOISE, batches, make_batch, step_generator
from flowplug.train.checkpoint import CheckpointError, build_model, capture_rng, load_checkpoint, restore_rng
from flowplug.train.config import TrainConfig, budget_clock, lr_factor
from flowplug.train.devices import autocast, resolve_device, resolve_precision
from flowplug.train.distributed import rank_zero_only
from flowplug.train.ema import make_ema
from flowplug.train.evaluation import evaluate
from flowplug.train.feedback import MetricsLogger, Progress, notify, save_image_grid, write_report
from flowplug.train.objectives import Objective, get_objective
from flowplug.train.resume import changed_options, extension_segment
from flowplug.train.rotation import (
    BEST,
    latest_checkpoint,
    load_latest,
    remove_stale_temporaries,
    save_rotating,
    set_aside_after,
)
from flowplug.train.run_folder import RunFolder

__all__ = ["Trainer"]

_LIKELIHOOD = {"type": "likelihood"}


def _check_levels(model: FlowModel, levels: list[int]) -> None:
    """Raise the model's own error now if it has no such ``levels`` (not when the phase starts, minutes into a
    run)."""
    try:
        model.check_levels(levels)
    except ValueError as error:
        raise ValueError(f"likelihood_levels {levels}: {error}") from None


class _ObjectiveModule(nn.Module):
    """Wraps model and objective so that DDP sees the whole loss computation as ``forward``."""

    def __init__(self, model: FlowModel, objective: Objective, n_bins: int) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.n_bins = n_bins

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = self.objective(self.model, Batch(v, self.n_bins))
        for name, term in collect_extra_losses(self.model).items():
            loss = loss + term
            metrics[name] = term.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


def _phase_of_older_checkpoint(state: dict[str, Any]) -> int | None:
    """Where the likelihood phase of a checkpoint written before phases were recorded began: at its
    ``likelihood_after`` step, if the run had reached it (those runs switched objective there, nothing else)."""
    after = state.get("trainer_config", {}).get("likelihood_after")
    return after if after is not None and state["step"] >= after else None


class Trainer:
    """Fits ``model`` with the settings of ``config``; see :class:`~flowplug.train.config.TrainConfig`.

    ``out_dir`` (optional) receives the run folder (:class:`~flowplug.train.run_folder.RunFolder`).
    ``device`` is ``"auto"``, ``"cpu"``, ``"cuda[:i]"`` or ``"mps"``; under ``torchrun`` each process joins
    the process group and takes its own GPU. ``parent`` is the record of the checkpoint a grown model came from
    (:func:`flowplug.train.load_parent`); it is written into the run's checkpoints,
    ``config.json`` and report, and a resume restores it from the checkpoint.
    """

    def __init__(
        self,
        model: FlowModel,
        config: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        device: str | torch.device = "auto",
        parent: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, FlowModel):
            raise TypeError(
                "the model must be a flowplug.FlowModel (subclass it and implement log_prob and sample; "
                f"the rest has defaults), got {type(model).__name__}"
            )
        self.config = config or TrainConfig(steps=1000)
        self.device = distributed.setup(resolve_device(device))
        self.folder = RunFolder(Path(out_dir)) if out_dir is not None else None
        self.precision = resolve_precision(self.config.precision, model, self.device)
        self.dtype = torch.float64 if self.precision == "float64" else torch.float32
        self.model = model.to(self.device, self.dtype)
        self.objective = get_objective(self.config.objective)
        self._likelihood = get_objective(_LIKELIHOOD)
        if self.config.trainable_levels is not None:
            model.set_trainable_levels(self.config.trainable_levels)
        if self.config.likelihood_levels is not None:
            _check_levels(model, self.config.likelihood_levels)
        self._total_steps: int | None = self.config.steps
        self._segment: tuple[int, float] | None = None
        self.likelihood_from: int | None = None
        """The step at which the likelihood phase began (``None``: it has not)."""
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.ema: AveragedModel | None = None
        self.step = 0
        self.skipped_steps = 0
        self.best_val_bpd: float | None = None
        self.resumes: list[dict[str, Any]] = []
        """One record per resume of this run: step, checkpoint, changed options, schedule segment."""
        self.parent = parent
        self._last_eval_finite = True
        self._elapsed_before = 0.0
        self._clock_start = time.monotonic()
        self._bad_run = 0
        self._wrapped: nn.Module | None = None
        self._wrapped_key: tuple[int, Objective] | None = None
        self._logger: MetricsLogger | None = None
        self._budget_start: float | None = None

    @property
    def out_dir(self) -> Path | None:
        """The run folder, if any."""
        return self.folder.root if self.folder is not None else None

    # -- set-up -------------------------------------------------------------------------------

    def _ensure_ema(self) -> None:
        """Create the EMA copy, after any data-dependent initialisation has set the model up."""
        if self.ema is None and self.config.ema_decay is not None:
            self.ema = make_ema(self.model, self.config.ema_decay)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def current_objective(self) -> Objective:
        """The objective of the coming step: the configured one, or likelihood once the likelihood phase has
        begun."""
        return self._likelihood if self.likelihood_from is not None else self.objective

    def _lr_factor(self, step: int) -> float:
        """The multiplier of ``config.lr`` at ``step``: the schedule's, or ``likelihood_lr / lr`` in the
        likelihood phase when that rate is set."""
        cfg = self.config
        if cfg.likelihood_lr is not None and self.likelihood_from is not None:
            return cfg.likelihood_lr / cfg.lr
        return lr_factor(cfg, step, self._total_steps, self._segment)

    def _likelihood_phase_due(self) -> bool:
        """Whether the likelihood phase starts with the coming step: at ``likelihood_after``, or (in ``fit``,
        the same decision on every process) when ``likelihood_minutes`` of the time budget are left."""
        cfg = self.config
        if self.likelihood_from is not None:
            return False
        if cfg.likelihood_after is not None:
            return self.step >= cfg.likelihood_after
        if cfg.likelihood_minutes is None or self._budget_start is None:
            return False
        return self._budget_clock_past(60 * (cfg.minutes - cfg.likelihood_minutes))

    def _begin_likelihood_phase(self) -> None:
        """Continue from the EMA weights (the EMA restarts from them: its warm-up ramp follows the phase's
        first steps) with fresh optimiser moments, at the phase's rate."""
        self.likelihood_from = self.step
        self._freeze_for_phase()
        if self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())
            self.ema = make_ema(self.model, self.config.ema_decay)
        self.optimizer.state.clear()
        self._apply_rates()

    def _freeze_for_phase(self) -> None:
        """Train only ``likelihood_levels`` (when set) in the likelihood phase."""
        if self.config.likelihood_levels is not None:
            self.model.set_trainable_levels(self.config.likelihood_levels)

    def _module(self, n_bins: int) -> nn.Module:
        """The (DDP-wrapped, in a process group) objective module, built on first use and rebuilt
        when the objective switches."""
        objective = self.current_objective()
        if self._wrapped is None or self._wrapped_key != (n_bins, objective):
            wrapped = _ObjectiveModule(self.model, objective, n_bins)
            if distributed.is_distributed():
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                wrapped = DistributedDataParallel(wrapped, device_ids=device_ids)
            self._wrapped, self._wrapped_key = wrapped, (n_bins, objective)
        return self._wrapped

    # -- one step -----------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on this process's share ``batch`` of the global batch.

        Gradients are averaged over accumulation micro-batches and processes. A step whose loss
        or gradient norm is not finite is skipped (parameters, optimiser and EMA untouched),
        counted in ``skipped_steps`` and logged; ``max_bad_steps`` of them in a row raise
        ``FloatingPointError``. Returns the step's metrics averaged over processes; the step's only
        host synchronisation is reading them back.
        """
        if self.step == 0 and self._wrapped is None:
            # Data-dependent initialisation (MRCNF's standardisation, ActNorm) on this batch
            # before DDP copies rank 0's state to every process.
            with torch.no_grad(), self._autocast():
                self.model.initialize_from_data(batch.v)
                self.current_objective()(self.model, batch)
        self._ensure_ema()
        if self._likelihood_phase_due():
            self._begin_likelihood_phase()
        module = self._module(batch.n_bins)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        chunks = batch.v.chunk(self.config.accumulation)
        sums: dict[str, torch.Tensor] = {}
        for i, chunk in enumerate(chunks):
            sync = i == len(chunks) - 1 or not isinstance(module, DistributedDataParallel)
            with (contextlib.nullcontext() if sync else module.no_sync()), self._autocast():
                loss, metrics = module(chunk)
            (loss / len(chunks)).backward()
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value.float() / len(chunks)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.zeros(())
        names = sorted(sums)
        values = torch.stack([sums[n] for n in names] + [grad_norm.float().to(self.device)])
        finite = torch.isfinite(values).all().float()
        reduced = distributed.all_reduce_mean(torch.cat([values, finite.view(1)])).tolist()
        result = dict(zip([*names, "grad_norm"], reduced[:-1], strict=True))
        if reduced[-1] == 1.0:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self._bad_run = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self._bad_run += 1
            rank_zero_warn(f"step {self.step}: non-finite loss or gradient, step skipped "
                           f"({self.skipped_steps} so far)")
            if self._bad_run >= self.config.max_bad_steps:
                raise FloatingPointError(
                    f"the last {self._bad_run} steps all produced non-finite losses or gradients "
                    f"(step {self.step}); lower the learning rate, use float32/float64, or "
                    "check the data"
                )
        self.scheduler.step()
        self.step += 1
        result["lr"] = self.optimizer.param_groups[0]["lr"]
        result["skipped_steps"] = float(self.skipped_steps)
        return result

    def _batch(self, x: torch.Tensor, n_bins: int) -> Batch:
        generator = step_generator(self.config.seed, self.step, NOISE)
        return make_batch(x, n_bins, generator, hflip=self.config.hflip, dtype=self.dtype,
                          device=self.device)

    # -- evaluation and sampling --------------------------------------------------------------

    def eval_model(self) -> FlowModel:
        """The weights that evaluation, samples and reports use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, data: ImageData, *, use_ema: bool = True) -> dict[str, Any]:
        """Mean BPD over all of ``data`` (shared among processes), overall and per level; see
        :func:`flowplug.train.evaluation.evaluate` (noise seeded by the config's ``seed``)."""
        return evaluate(self.eval_model() if use_ema else self.model, data, seed=self.config.seed,
                        batch_size=self.config.eval_batch_size, dtype=self.dtype, device=self.device,
                        autocast=self._autocast())

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float | None = None) -> torch.Tensor:
        """Images from the EMA model (or the model without EMA), seeded by the current step."""
        model = self.eval_model()
        model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed + self.step)
            v, _ = model.sample(num_samples, temperature=temperature)
        return v

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self, data_info: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint contents (plain data and tensors only)."""
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "best_val_bpd": self.best_val_bpd,
            "likelihood_from": self.likelihood_from,
            "total_steps": self._total_steps,
            "schedule_segment": list(self._segment) if self._segment is not None else None,
            "elapsed_s": self._elapsed(),
            "resumes": self.resumes,
            "parent": self.parent,
            "rng": capture_rng(),
            "trainer_config": self.config.to_dict(),
            "data": data_info,
        }

    @classmethod
    def restore(cls, state: dict[str, Any], *, device: str | torch.device = "auto") -> Trainer:
        """A trainer holding checkpoint ``state`` (:func:`~flowplug.train.checkpoint.load_checkpoint`): its model
        and weights, EMA, step and options, with no progress bar and no run folder: for evaluating or sampling
        it. Unknown names in the stored options are refused before the model is built."""
        config = TrainConfig.from_dict({**state["trainer_config"], "progress": False})
        trainer = cls(build_model(state), config, device=device)
        trainer.load_state_dict(state, state["data"])
        return trainer

    def load_state_dict(self, state: dict[str, Any], data_info: dict[str, Any]) -> None:
        """Continue from a checkpoint; a model or data that do not match raise CheckpointError."""
        if state["model_config"] != self.model.config:
            raise CheckpointError(f"the checkpoint's model config {state['model_config']} "
                                  f"differs from this model's {self.model.config}")
        for key in ("n_bins", "image_shape", "split"):
            if key in state["data"] and key in data_info and state["data"][key] != data_info[key]:
                raise CheckpointError(
                    f"the checkpoint was trained on data with {key}={state['data'].get(key)}, "
                    f"this data has {data_info.get(key)}"
                )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._ensure_ema()
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"the checkpoint does not fit this model: {error}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.skipped_steps = state["skipped_steps"]
        self.best_val_bpd = state["best_val_bpd"]
        self.likelihood_from = state.get("likelihood_from", _phase_of_older_checkpoint(state))
        if self.likelihood_from is not None:
            self._freeze_for_phase()
        segment = state.get("schedule_segment")
        self._segment = (int(segment[0]), float(segment[1])) if segment is not None else None
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self.resumes = list(state.get("resumes", []))
        self.parent = state.get("parent")
        restore_rng(state["rng"])

    def _apply_rates(self) -> None:
        """Set the optimiser's base rate and weight decay from the config and its current rate from the
        schedule (for an unchanged config, exactly the values the checkpoint holds)."""
        factor = self._lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group.update(initial_lr=self.config.lr, lr=self.config.lr * factor,
                         weight_decay=self.config.weight_decay)
        self.scheduler.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _resume(self, resume: bool | str | Path, data_info: dict[str, Any]) -> None:
        """Continue from ``resume`` (a checkpoint path, or True: the newest intact one in the run folder),
        applying and recording changed options; says on the console what it resumed from."""
        if self.folder is not None:
            for path in remove_stale_temporaries(self.folder.checkpoints):
                notify(f"removed {path}, left by a write that was interrupted")
        if resume is True:
            if self.folder is None:
                raise ValueError("resume=True continues the run in out_dir; give out_dir or a checkpoint path")
            found = load_latest(self.folder.checkpoints, self.device)
            if found is None:
                notify(f"no checkpoint in {self.folder.checkpoints} to resume from; starting a new run")
                return
            path, state, notes = found
            for note in notes:
                notify(note)
        else:
            path, state = Path(resume), load_checkpoint(resume, self.device)
        self.load_state_dict(state, data_info)
        changes = changed_options(state.get("trainer_config", {}), self.config)
        old_total = state.get("total_steps", state.get("trainer_config", {}).get("steps"))
        self._segment = extension_segment(self.config, self.step, old_total, self._total_steps,
                                          self._segment)
        self._apply_rates()
        record: dict[str, Any] = {"step": self.step, "from": str(path), "changed": changes}
        if old_total != self._total_steps:
            record["schedule_segment"] = list(self._segment) if self._segment is not None else None
        self.resumes.append(record)
        if self.folder is not None:
            self._set_aside(self.step)
        changed = "; changed " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()) \
            if changes else ""
        notify(f"resumed from {path} at step {self.step}{changed}")

    @rank_zero_only
    def _set_aside(self, step: int) -> None:
        moved = set_aside_after(self.folder.checkpoints, step)
        if moved:
            notify(f"moved {len(moved)} checkpoint(s) past step {step} to {moved[0].parent}: "
                   "the continuation starts from the resumed step")

    def latest_checkpoint(self) -> Path | None:
        """The highest-step checkpoint in the run folder, if any."""
        return latest_checkpoint(self.folder.checkpoints) if self.folder is not None else None

    def _healthy(self) -> bool:
        """Whether the weights (and EMA weights) are finite and the last evaluation was."""
        tensors = list(self.model.parameters())
        if self.ema is not None:
            tensors += list(self.ema.module.parameters())
        return self._last_eval_finite and bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _resume_hint(self) -> str:
        """Which checkpoint a stopped run can be resumed from."""
        if self.folder is None:
            return "no run folder was given, so no checkpoint was written"
        good = self.latest_checkpoint()
        best = self.folder.checkpoints / BEST
        good = good or (best if best.exists() else None)
        if good is None:
            return "no checkpoint was written yet"
        return f"the newest good checkpoint is {good}; continue with `flowplug train --resume {good}` " \
               f"(or fit(..., resume={str(good)!r})) after lowering the learning rate"

    def _track_best(self, bpd: float) -> None:
        """Note an evaluation: a finite one better than the best so far becomes the best."""
        self._last_eval_finite = math.isfinite(bpd)
        if self._last_eval_finite and (self.best_val_bpd is None or bpd < self.best_val_bpd):
            self.best_val_bpd = bpd

    @rank_zero_only
    def _save(self, data_info: dict[str, Any], val_bpd: float | None) -> None:
        if not self._healthy():
            warnings.warn(f"step {self.step}: no checkpoint written, the weights or the last evaluation are "
                          f"not finite; {self._resume_hint()}", stacklevel=2)
            return
        best = val_bpd is not None and val_bpd == self.best_val_bpd
        save_rotating(self.state_dict(data_info), self.folder.checkpoints, self.step,
                      keep_last=self.config.keep_last, best=best)

    # -- the loop -----------------------------------------------------------------------------

    def fit(
        self,
        train: ImageData,
        val: ImageData | None = None,
        *,
        resume: bool | str | Path = False,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Train on ``train`` until the budget is spent; returns the final report.

        ``resume=True`` continues from the newest intact checkpoint in ``out_dir`` (falling back past a
        corrupt one, saying so; starting afresh if there is none); a path continues from that checkpoint
        (``best.pt`` too). Without ``resume``, an ``out_dir`` that already holds a run is refused unless
        ``overwrite=True``, which deletes that run's files first. On resume, changed options are applied
        and recorded or refused (:mod:`flowplug.train.resume`); a larger step budget continues the
        schedule with a new cosine segment (:func:`~flowplug.train.resume.extension_segment`). The report
        holds the held-out BPD (overall and per level, on ``val`` when given), steps, time, NFE and
        parameter count.
        """
        cfg = self.config
        if tuple(self.model.image_shape) != train.image_shape:
            raise ValueError(f"the model expects images of shape {tuple(self.model.image_shape)}, "
                             f"the data has {train.image_shape}")
        warp = self.model.bin_warp
        if warp is not None and warp.n_bins != train.n_bins:
            raise ValueError(f"the model's bin_warp is for n_bins={warp.n_bins} but the data has "
                             f"n_bins={train.n_bins}; build the model with bin_warp={{'n_bins': {train.n_bins}}}")
        world = distributed.world_size()
        if cfg.batch_size % (world * cfg.accumulation):
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by processes x "
                             f"accumulation = {world} x {cfg.accumulation}")
        steps_per_epoch = len(train) // cfg.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(train)} "
                             "training images")
        if cfg.epochs is not None:
            by_epochs = math.ceil(cfg.epochs * steps_per_epoch)
            self._total_steps = min(by_epochs, cfg.steps or by_epochs)
        data_info = train.info()
        if self.folder is not None and not resume:
            self.folder.claim(overwrite)
            distributed.barrier()  # every rank has looked at the folder before rank 0 writes to it
        if resume:
            self._resume(resume, data_info)
        if self.folder is not None:
            self._logger = MetricsLogger(self.folder.root, cfg.tensorboard,
                                         after_step=self.step if resume else None)
            self.folder.write_config({
                "trainer": {**cfg.to_dict(), "tensorboard": self._logger.tensorboard},
                "model": self.model.config, "data": data_info,
                "device": str(self.device), "precision": self.precision, "processes": world,
                "resumes": self.resumes,
                **({} if self.parent is None else {"parent": self.parent}),
            })
        start, start_step = time.monotonic(), self.step
        self._clock_start = start
        self._budget_start = budget_clock(cfg.clock)
        progress = Progress(self._total_steps, self.step, cfg.progress)
        last: dict[str, float] = {}
        try:
            for x in batches(train, cfg.batch_size, cfg.seed, self.step):
                if self._budget_spent():
                    break
                last = self.train_step(self._batch(x, train.n_bins))
                progress.update(last)
                self._after_step(last, val, data_info)
        except (FloatingPointError, ODESolverError) as error:
            raise type(error)(f"{error}; {self._resume_hint()}") from error
        finally:
            progress.close()
        elapsed = time.monotonic() - start
        report = self._report(last, elapsed, self.step - start_step, val, data_info)
        if self._logger is not None:
            self._logger.close()
        return report

    def _budget_spent(self) -> bool:
        done = self._total_steps is not None and self.step >= self._total_steps
        if self.config.minutes is not None:
            done = done or self._budget_clock_past(60 * self.config.minutes)
        return done

    def _budget_clock_past(self, seconds: float) -> bool:
        """Whether this ``fit``'s budget clock has passed ``seconds`` on any process (one decision for all)."""
        late = torch.tensor(float(budget_clock(self.config.clock) - self._budget_start >= seconds))
        return distributed.all_reduce_mean(late.to(self.device)).item() > 0

    def _elapsed(self) -> float:
        """Training seconds of this run over all its resumes."""
        return self._elapsed_before + time.monotonic() - self._clock_start

    def _every(self, interval: int | None) -> bool:
        return interval is not None and self.step % interval == 0

    def _after_step(self, metrics: dict[str, float], val: ImageData | None,
                    data_info: dict[str, Any]) -> None:
        elapsed = self._elapsed()
        if self._logger is not None and self._every(self.config.log_every):
            self._logger.log(self.step, elapsed, "train", metrics)
        val_bpd = None
        if val is not None and self._every(self.config.eval_every):
            result = self.evaluate(val)
            val_bpd = result["bpd"]
            self._track_best(val_bpd)
            if self._logger is not None:
                flat = {"bpd": val_bpd, **{f"bpd_level{i}": b
                                           for i, b in enumerate(result["per_level_bpd"])}}
                self._logger.log(self.step, elapsed, "val", flat)
        if self.folder is None:
            return
        if self._every(self.config.sample_every):
            self._save_samples()
        if self._every(self.config.checkpoint_every):
            self._save(data_info, val_bpd)

    def _save_samples(self) -> None:
        v = self.sample(self.config.num_samples, self.config.temperature)
        save_image_grid(v, self.folder.samples(self.step, self.config.temperature))

    def _report(self, last: dict[str, float], elapsed: float, steps_run: int,
                val: ImageData | None, data_info: dict[str, Any]) -> dict[str, Any]:
        report: dict[str, Any] = {
            "model": (self.model.config or {}).get("type", type(self.model).__name__),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "processes": distributed.world_size(),
            "precision": self.precision,
            "steps": self.step,
            "steps_this_run": steps_run,
            "skipped_steps": self.skipped_steps,
            "train_time_s": round(elapsed, 3),
            "clock": self.config.clock,
            "budget_time_s": round(budget_clock(self.config.clock) - self._budget_start, 3),
            "steps_per_s": round(steps_run / elapsed, 3) if elapsed > 0 else None,
            "final_train_loss": last.get("loss"),
            "final_train_bpd": last.get("bpd"),
            "data": data_info,
        }
        if self.parent is not None:
            report["grown_from"] = {key: self.parent[key] for key in ("checkpoint", "step", "sha256")}
        val_bpd = None
        if val is not None:
            held_out = self.evaluate(val)
            report["held_out"] = held_out
            self._track_best(held_out["bpd"])
            val_bpd = held_out["bpd"]
        if self.folder is not None:
            self._save(data_info, val_bpd)
            self._save_samples()
            write_report(report, self.folder.root)
        return report
