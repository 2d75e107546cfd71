"""The one training loop for every flowplug model: fit, evaluate, sample, checkpoint, resume.

A model is any ``nn.Module`` with ``log_prob(v)`` (and ``sample(n, temperature)`` for image grids)
whose ``config`` is a registry spec, so checkpoints can rebuild it. Images arrive as integers
(:class:`flowplug.data.ImageData`) and are dequantised once per pixel per step (DESIGN.md
section 3); the loss is a pluggable objective (:mod:`flowplug.train.objectives`) plus the extra
terms components contribute (:mod:`flowplug.losses`). One process, one GPU, or many processes under
``torchrun`` (DDP) run the same code.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler

from flowplug.data import ImageData, random_hflip
from flowplug.losses import collect_extra_losses
from flowplug.metrics import dequantize
from flowplug.train import distributed
from flowplug.train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from flowplug.train.distributed import rank_zero_only
from flowplug.train.feedback import MetricsLogger, Progress, save_image_grid, write_report
from flowplug.train.objectives import Objective, get_objective, likelihood, objective_name

__all__ = ["TrainConfig", "Trainer", "count_nfe", "resolve_device"]

_PRECISIONS = ("auto", "float32", "float64", "bf16")
_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Everything that shapes a run. Budgets: training stops at the first of ``steps``, ``epochs``
    and ``minutes`` that is reached (at least one is needed)."""

    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    batch_size: int = 64
    """Images per optimiser step over all processes and accumulation micro-batches."""
    accumulation: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    schedule: str = "cosine"
    """``"cosine"`` (decay to 0 over the step/epoch budget after warm-up) or ``"constant"``."""
    grad_clip: float | None = 50.0
    ema_decay: float | None = 0.999
    """Decay of the weights' moving average used for evaluation and samples (ramped up from 0.1
    over the first updates); ``None`` evaluates the raw weights."""
    precision: str = "auto"
    """``"float32"``, ``"float64"``, ``"bf16"`` (autocast, CUDA) or ``"auto"``: bf16 on CUDA for
    discrete flows, float32 for CNFs (models with ``last_nfe`` modules) and on other devices."""
    objective: str = "likelihood"
    """``"likelihood"``, ``"flow_matching"`` (CNF models) or a callable ``(model, v, n_bins) ->
    (loss, metrics)``; evaluation always reports exact-likelihood bits per dimension."""
    likelihood_after: int | None = None
    """Switch to likelihood fine-tuning from this step on (e.g. after flow-matching pre-training)."""
    trainable_levels: list[int] | None = None
    """Train only these levels of a multi-level model (``set_trainable_levels``); the rest stay frozen."""
    seed: int = 0
    hflip: bool = False
    log_every: int = 10
    eval_every: int | None = None
    eval_batch_size: int = 256
    sample_every: int | None = None
    num_samples: int = 64
    temperature: float = 1.0
    checkpoint_every: int | None = None
    keep_last: int = 2
    max_bad_steps: int = 20
    """Consecutive non-finite steps after which the run stops with an error."""
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulation", "eval_batch_size", "num_samples",
                     "keep_last", "max_bad_steps", "log_every", "eval_every", "sample_every",
                     "checkpoint_every", "likelihood_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("epochs", "minutes", "lr", "temperature", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.steps is None and self.epochs is None and self.minutes is None:
            raise ValueError("give a training budget: steps, epochs or minutes")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "cosine" and self.steps is None and self.epochs is None:
            raise ValueError("schedule='cosine' needs a steps or epochs budget; "
                             "use schedule='constant' with minutes alone")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must not be negative")
        get_objective(self.objective)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (a callable objective recorded by :func:`objective_name`)."""
        return {**asdict(self), "objective": objective_name(self.objective)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from plain data; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trainer option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; an unavailable device raises ``ValueError``."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available")
    return device


def count_nfe(model: nn.Module) -> int | None:
    """Sum of ``last_nfe`` over the model's modules (CNF function evaluations), None if none."""
    counts = [m.last_nfe for m in model.modules() if getattr(m, "last_nfe", None) is not None]
    return int(sum(counts)) if counts else None


def _ema_with_warmup(decay: float):
    """EMA update whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.

    A fixed decay of 0.999 would keep over half the weight on the first parameters for 600 steps,
    so short runs would be evaluated at nearly their initialisation; the ramp follows the current
    weights early and averages over about ``1 / (1 - decay)`` steps later on.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        pairs = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([a for a, _ in pairs], [c for _, c in pairs], 1.0 - effective)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # flags and counters (e.g. "initialised") are copied
                a.copy_(c)

    return update


class _ObjectiveModule(nn.Module):
    """Wraps model and objective so that DDP sees the whole loss computation as ``forward``."""

    def __init__(self, model: nn.Module, objective: Any, n_bins: int) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.n_bins = n_bins

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = self.objective(self.model, v, self.n_bins)
        for name, term in collect_extra_losses(self.model).items():
            loss = loss + term
            metrics[name] = term.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


class Trainer:
    """Fits ``model`` with the settings of ``config``; see :class:`TrainConfig`.

    ``out_dir`` (optional) receives the run folder: ``config.json``, ``metrics.csv``, TensorBoard
    events, ``samples/``, ``checkpoints/`` and ``report.json``/``report.txt``. ``device`` is
    ``"auto"``, ``"cpu"``, ``"cuda[:i]"`` or ``"mps"``; under ``torchrun`` each process joins the
    process group and takes its own GPU.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        if not callable(getattr(model, "log_prob", None)):
            raise TypeError(f"the model must have a log_prob method, got {type(model).__name__}")
        self.config = config or TrainConfig(steps=1000)
        self.device = distributed.setup(resolve_device(device))
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.precision = self._resolve_precision(model)
        dtype = torch.float64 if self.precision == "float64" else torch.float32
        self.model = model.to(self.device, dtype)
        self.dtype = dtype
        self.objective = get_objective(self.config.objective)
        if self.config.trainable_levels is not None:
            if not callable(getattr(model, "set_trainable_levels", None)):
                raise ValueError(
                    f"trainable_levels needs a multi-level model, {type(model).__name__} has no levels"
                )
            model.set_trainable_levels(self.config.trainable_levels)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.ema: AveragedModel | None = None
        self.step = 0
        self.skipped_steps = 0
        self.best_val_bpd: float | None = None
        self._bad_run = 0
        self._total_steps: int | None = self.config.steps
        self._wrapped: nn.Module | None = None
        self._wrapped_objective: Objective | None = None
        self._n_bins: int | None = None
        self._logger: MetricsLogger | None = None

    # -- set-up -------------------------------------------------------------------------------

    def _resolve_precision(self, model: nn.Module) -> str:
        precision = self.config.precision
        if precision == "auto":
            discrete = count_nfe(model) is None and not any(
                hasattr(m, "last_nfe") for m in model.modules()
            )
            return "bf16" if self.device.type == "cuda" and discrete else "float32"
        if precision == "bf16" and self.device.type != "cuda":
            raise ValueError(f"precision='bf16' needs a CUDA device, got {self.device}")
        return precision

    def _lr_factor(self, step: int) -> float:
        warmup = self.config.warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if self.config.schedule == "constant" or not self._total_steps:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, self._total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _ensure_ema(self) -> None:
        """Create the EMA copy, after any data-dependent initialisation has set the model up."""
        if self.ema is None and self.config.ema_decay is not None:
            self.ema = AveragedModel(
                self.model, multi_avg_fn=_ema_with_warmup(self.config.ema_decay),
                use_buffers=True,
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def current_objective(self) -> Objective:
        """The objective of the coming step: the configured one, or likelihood once
        ``likelihood_after`` steps are done."""
        switch = self.config.likelihood_after
        return likelihood if switch is not None and self.step >= switch else self.objective

    def _module(self, n_bins: int) -> nn.Module:
        """The (DDP-wrapped, in a process group) objective module, built on first use and rebuilt
        when the objective switches."""
        objective = self.current_objective()
        if self._wrapped is None or self._n_bins != n_bins or self._wrapped_objective is not objective:
            wrapped = _ObjectiveModule(self.model, objective, n_bins)
            if distributed.is_distributed():
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                wrapped = DistributedDataParallel(wrapped, device_ids=device_ids)
            self._wrapped, self._n_bins, self._wrapped_objective = wrapped, n_bins, objective
        return self._wrapped

    # -- one step -----------------------------------------------------------------------------

    def train_step(self, v: torch.Tensor, n_bins: int) -> dict[str, float]:
        """One optimiser step on this process's share ``v`` of the global batch (dequantised).

        Gradients are averaged over accumulation micro-batches and processes. A step whose loss
        or gradient norm is not finite is skipped (parameters, optimiser and EMA untouched),
        counted in ``skipped_steps`` and logged; ``max_bad_steps`` of them in a row raise
        ``FloatingPointError``. Returns the step's metrics averaged over processes.
        """
        if self.step == 0 and self._wrapped is None:
            # Data-dependent initialisation (MRCNF's standardisation, ActNorm) on this batch
            # before DDP copies rank 0's state to every process.
            with torch.no_grad(), self._autocast():
                initialize = getattr(self.model, "initialize_from_data", None)
                if callable(initialize):
                    initialize(v)
                self.current_objective()(self.model, v, n_bins)
        self._ensure_ema()
        module = self._module(n_bins)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        chunks = v.chunk(self.config.accumulation)
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
        reduced = distributed.all_reduce_mean(torch.cat([values, finite.view(1)]))
        result = dict(zip([*names, "grad_norm"], reduced[:-1].tolist(), strict=True))
        if reduced[-1].item() == 1.0:
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

    # -- data ---------------------------------------------------------------------------------

    def _step_generator(self, purpose: int) -> torch.Generator:
        """A generator seeded by (seed, step, rank, purpose), so a resumed run redraws the same."""
        seed = (self.config.seed * 1_000_003 + self.step * 7919 + distributed.rank() * 131
                + purpose) % (2**63)
        return torch.Generator().manual_seed(seed)

    def _batches(self, data: ImageData) -> Iterator[torch.Tensor]:
        """This process's share of each global batch, from the current step on, forever."""
        world = distributed.world_size()
        per_rank = self.config.batch_size // world
        steps_per_epoch = len(data) // self.config.batch_size
        sampler = DistributedSampler(range(len(data)), num_replicas=world,
                                     rank=distributed.rank(), shuffle=True,
                                     seed=self.config.seed, drop_last=True)
        while True:
            epoch, position = divmod(self.step, steps_per_epoch)
            sampler.set_epoch(epoch)
            order = list(sampler)
            for b in range(position, steps_per_epoch):
                yield data.x[order[b * per_rank:(b + 1) * per_rank]]

    def _dequantize(self, x: torch.Tensor, n_bins: int) -> torch.Tensor:
        generator = self._step_generator(1)
        if self.config.hflip:
            x = random_hflip(x, generator)
        return dequantize(x, n_bins, generator=generator, dtype=self.dtype).to(self.device)

    # -- evaluation and sampling --------------------------------------------------------------

    def eval_model(self) -> nn.Module:
        """The weights that evaluation, samples and reports use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def evaluate(self, data: ImageData, *, use_ema: bool = True) -> dict[str, Any]:
        """Mean BPD over all of ``data`` (shared among processes), overall and per level.

        ``per_level_bpd[s]`` is level ``s``'s share ``-E[log p_s] / (D ln 2)``; their sum plus
        ``log2(n_bins)`` is ``bpd``. The dequantisation noise is fixed by the seed, so repeated
        evaluations are comparable. ``nfe`` is the mean CNF function evaluations per batch.
        """
        model = self.eval_model() if use_ema else self.model
        model.eval()
        dims = math.prod(data.image_shape)
        generator = torch.Generator().manual_seed(self.config.seed + 2**31)
        noise = dequantize(data.x, data.n_bins, generator=generator, dtype=self.dtype)
        mine = noise[distributed.rank()::distributed.world_size()]
        sums, nfes = None, []
        with torch.random.fork_rng(devices=[]), self._autocast():
            torch.manual_seed(self.config.seed)
            for batch in mine.split(self.config.eval_batch_size):
                batch = batch.to(self.device)
                levels = (model.level_log_probs(batch) if hasattr(model, "level_log_probs")
                          else [model.log_prob(batch)])
                batch_sums = torch.stack([lp.double().sum() for lp in levels])
                sums = batch_sums if sums is None else sums + batch_sums
                nfe = count_nfe(model)
                if nfe is not None:
                    nfes.append(nfe)
        count = torch.tensor(float(mine.shape[0]), dtype=torch.float64, device=self.device)
        totals = distributed.all_reduce_mean(torch.cat([sums, count.view(1)]))
        per_level = (-totals[:-1] / totals[-1] / (dims * math.log(2.0))).tolist()
        result: dict[str, Any] = {
            "bpd": sum(per_level) + math.log2(data.n_bins),
            "per_level_bpd": per_level,
            "num_images": len(data),
        }
        if nfes:
            result["nfe"] = sum(nfes) / len(nfes)
        return result

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
            "model_config": getattr(self.model, "config", None),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "best_val_bpd": self.best_val_bpd,
            "rng": capture_rng(),
            "trainer_config": self.config.to_dict(),
            "data": data_info,
        }

    def load_state_dict(self, state: dict[str, Any], data_info: dict[str, Any]) -> None:
        """Continue from a checkpoint; a model or data that do not match raise CheckpointError."""
        mine = getattr(self.model, "config", None)
        if state["model_config"] != mine:
            raise CheckpointError(f"the checkpoint's model config {state['model_config']} "
                                  f"differs from this model's {mine}")
        for key in ("n_bins", "image_shape"):
            if state["data"].get(key) != data_info.get(key):
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
        restore_rng(state["rng"])

    def _checkpoint_dir(self) -> Path:
        assert self.out_dir is not None
        return self.out_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """The highest-step checkpoint in the run folder, if any."""
        if self.out_dir is None:
            return None
        found = sorted(self._checkpoint_dir().glob("step-*.pt"))
        return found[-1] if found else None

    @rank_zero_only
    def _save(self, data_info: dict[str, Any], val_bpd: float | None) -> None:
        folder = self._checkpoint_dir()
        state = self.state_dict(data_info)
        save_checkpoint(state, folder / f"step-{self.step:08d}.pt")
        for old in sorted(folder.glob("step-*.pt"))[: -self.config.keep_last]:
            old.unlink()
        if val_bpd is not None and val_bpd == self.best_val_bpd:
            save_checkpoint(state, folder / "best.pt")

    # -- the loop -----------------------------------------------------------------------------

    def fit(
        self,
        train: ImageData,
        val: ImageData | None = None,
        *,
        resume: bool | str | Path = False,
    ) -> dict[str, Any]:
        """Train on ``train`` until the budget is spent; returns the final report.

        ``resume=True`` continues from the latest checkpoint in ``out_dir`` (starting afresh if
        there is none); a path continues from that checkpoint. The report holds the held-out BPD
        (overall and per level, on ``val`` when given), steps, time, NFE and parameter count.
        """
        cfg = self.config
        world = distributed.world_size()
        if cfg.batch_size % (world * cfg.accumulation):
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by processes x "
                             f"accumulation = {world} x {cfg.accumulation}")
        steps_per_epoch = len(train) // cfg.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(train)} "
                             "training images")
        shape = getattr(self.model, "image_shape", None)
        if shape is not None and tuple(shape) != train.image_shape:
            raise ValueError(f"the model expects images of shape {tuple(shape)}, "
                             f"the data has {train.image_shape}")
        if cfg.epochs is not None:
            by_epochs = math.ceil(cfg.epochs * steps_per_epoch)
            self._total_steps = min(by_epochs, cfg.steps or by_epochs)
        data_info = train.info()
        if resume:
            path = self.latest_checkpoint() if resume is True else Path(resume)
            if path is not None:
                self.load_state_dict(load_checkpoint(path, self.device), data_info)
                rank_zero_info(f"resumed from {path} at step {self.step}")
        if self.out_dir is not None:
            self._logger = MetricsLogger(self.out_dir, cfg.tensorboard)
            self._write_config(data_info)
        start, start_step = time.monotonic(), self.step
        progress = Progress(self._total_steps, self.step, cfg.progress)
        last: dict[str, float] = {}
        try:
            for x in self._batches(train):
                if self._budget_spent(start):
                    break
                last = self.train_step(self._dequantize(x, train.n_bins), train.n_bins)
                progress.update(last)
                self._after_step(last, start, val, data_info)
        finally:
            progress.close()
        elapsed = time.monotonic() - start
        report = self._report(last, elapsed, self.step - start_step, val, data_info)
        if self._logger is not None:
            self._logger.close()
        return report

    def _budget_spent(self, start: float) -> bool:
        done = self._total_steps is not None and self.step >= self._total_steps
        if self.config.minutes is not None:
            late = torch.tensor(float(time.monotonic() - start >= 60 * self.config.minutes))
            done = done or distributed.all_reduce_mean(late.to(self.device)).item() > 0
        return done

    def _every(self, interval: int | None) -> bool:
        return interval is not None and self.step % interval == 0

    def _after_step(self, metrics: dict[str, float], start: float, val: ImageData | None,
                    data_info: dict[str, Any]) -> None:
        elapsed = time.monotonic() - start
        if self._logger is not None and self._every(self.config.log_every):
            self._logger.log(self.step, elapsed, "train", metrics)
        val_bpd = None
        if val is not None and self._every(self.config.eval_every):
            result = self.evaluate(val)
            val_bpd = result["bpd"]
            if self.best_val_bpd is None or val_bpd < self.best_val_bpd:
                self.best_val_bpd = val_bpd
            if self._logger is not None:
                flat = {"bpd": val_bpd, **{f"bpd_level{i}": b
                                           for i, b in enumerate(result["per_level_bpd"])}}
                self._logger.log(self.step, elapsed, "val", flat)
        if self.out_dir is None:
            return
        if self._every(self.config.sample_every):
            self._save_samples()
        if self._every(self.config.checkpoint_every):
            self._save(data_info, val_bpd)

    def _save_samples(self) -> None:
        if not callable(getattr(self.eval_model(), "sample", None)):
            return
        v = self.sample(self.config.num_samples, self.config.temperature)
        save_image_grid(v, self.out_dir / "samples" / f"step-{self.step:08d}.png")

    @rank_zero_only
    def _write_config(self, data_info: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config = {"trainer": self.config.to_dict(), "model": getattr(self.model, "config", None),
                  "data": data_info, "device": str(self.device), "precision": self.precision,
                  "processes": distributed.world_size()}
        (self.out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def _report(self, last: dict[str, float], elapsed: float, steps_run: int,
                val: ImageData | None, data_info: dict[str, Any]) -> dict[str, Any]:
        report: dict[str, Any] = {
            "model": (getattr(self.model, "config", None) or {}).get(
                "type", type(self.model).__name__
            ),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "processes": distributed.world_size(),
            "precision": self.precision,
            "steps": self.step,
            "steps_this_run": steps_run,
            "skipped_steps": self.skipped_steps,
            "train_time_s": round(elapsed, 3),
            "steps_per_s": round(steps_run / elapsed, 3) if elapsed > 0 else None,
            "final_train_loss": last.get("loss"),
            "final_train_bpd": last.get("bpd"),
            "data": data_info,
        }
        if val is not None:
            held_out = self.evaluate(val)
            report["held_out"] = held_out
            if self.best_val_bpd is None or held_out["bpd"] < self.best_val_bpd:
                self.best_val_bpd = held_out["bpd"]
            val_bpd = held_out["bpd"]
        else:
            val_bpd = None
        if self.out_dir is not None:
            self._save(data_info, val_bpd)
            self._save_samples()
            write_report(report, self.out_dir)
        return report
