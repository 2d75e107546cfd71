"""The one training loop for every flowplug model: fit, evaluate, sample, checkpoint, resume.

A model is a :class:`~flowplug.FlowModel` whose ``config`` is a registry spec, so checkpoints can rebuild it.
Integer images (:class:`~flowplug.data.ImageData`) are dequantised once per pixel per step
(:mod:`~flowplug.train.batches`); the loss is the current phase's objective (:mod:`~flowplug.train.phases`) plus
the components' extra terms. One process, one GPU or many under ``torchrun`` (DDP) run the same code. Rates:
:mod:`~flowplug.train.schedule`; budget: :mod:`~flowplug.train.budget`; checkpoints and resume:
:mod:`~flowplug.train.state`; files: :mod:`~flowplug.train.run_folder`.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from flowplug.cnf.solver import ODESolverError
from flowplug.data import Batch, ImageData
from flowplug.models.base import FlowModel
from flowplug.train import distributed, state
from flowplug.train.batches import NOISE, batches, make_batch, step_generator
from flowplug.train.budget import Budget, BudgetPoints
from flowplug.train.checkpoint import Checkpoint, build_model
from flowplug.train.config import TrainConfig
from flowplug.train.devices import autocast, resolve_device, resolve_precision
from flowplug.train.ema import make_ema
from flowplug.train.evaluation import evaluate
from flowplug.train.feedback import MetricsLogger, Progress, run_report, save_samples, write_report
from flowplug.train.labels import grid_labels
from flowplug.train.objectives import ObjectiveModule, get_objective
from flowplug.train.phases import advance_phases, check_plan_fits
from flowplug.train.run_folder import RunFolder
from flowplug.train.schedule import learning_rate

__all__ = ["Trainer"]

_QUARTERS = 4
"""Checkpoints of a run without ``checkpoint_every``: one at each quarter of the budget."""



class Trainer:
    """Fits ``model`` with the settings of ``config``; see :class:`~flowplug.train.config.TrainConfig`.

    ``out_dir`` (optional) receives the run folder (:class:`~flowplug.train.run_folder.RunFolder`).
    ``device`` is ``"auto"``, ``"cpu"``, ``"cuda[:i]"`` or ``"mps"``; under ``torchrun`` each process joins
    the process group and takes its own GPU. ``parent`` is the record of the checkpoint a grown model came from
    (:func:`flowplug.train.load_parent`) and ``recipe`` the record of the recipe that built the model and config
    (:func:`flowplug.recipes.plan`); both are written into ``config.json`` and the checkpoints (the parent into
    the report too), and a resume restores them from the checkpoint.
    """

    def __init__(
        self,
        model: FlowModel,
        config: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        device: str | torch.device = "auto",
        parent: dict[str, Any] | None = None,
        recipe: dict[str, Any] | None = None,
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
        check_plan_fits(self.config.phases, model)
        self._objectives = [get_objective(phase["objective"]) for phase in self.config.phases]
        if self.config.trainable_levels is not None:
            model.set_trainable_levels(self.config.trainable_levels)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.ema: AveragedModel | None = None
        self.step = 0
        self.skipped_steps = 0
        self.best_val_bpd: float | None = None
        self.phase, self.phase_starts = 0, [0]  # the current phase's index; the step each phase began at
        self.total_steps: int | None = self.config.steps
        self.segment: tuple[int, float] | None = None  # a resume's cosine segment (flowplug.train.schedule)
        self.resumes: list[dict[str, Any]] = []  # per resume: step, checkpoint, changed options, segment
        self.parent = parent
        self.recipe = recipe
        self.elapsed_before = 0.0
        self.curve: list[dict[str, Any]] = []
        """The evaluations of ``eval_points``: step, training seconds on the budget clock, BPD."""
        self.budget: Budget | None = None
        self._last_eval_finite = True
        self._bad_run = 0
        self._wrapped: nn.Module | None = None
        self._wrapped_key: tuple[int, int] | None = None
        self._logger: MetricsLogger | None = None
        self._fit_started = time.monotonic()
        self._apply_rates()

    def elapsed(self) -> float:
        """Wall seconds this run has trained, over all its resumes."""
        return self.elapsed_before + time.monotonic() - self._fit_started

    @property
    def out_dir(self) -> Path | None:
        return self.folder.root if self.folder is not None else None

    def current_phase(self) -> dict[str, Any]:
        return self.config.phases[self.phase]

    def _apply_rates(self) -> None:
        """Set every optimiser group's rate (from the schedule) and weight decay for the coming step."""
        rate = learning_rate(self.config, self.step, self.total_steps, self.segment, self.current_phase())
        for group in self.optimizer.param_groups:
            group.update(lr=rate, weight_decay=self.config.weight_decay)

    def apply_phase_levels(self) -> None:
        """Train the current phase's levels (when it names them)."""
        levels = self.current_phase()["levels"]
        if levels is not None:
            self.model.set_trainable_levels(levels)

    def ensure_ema(self) -> None:
        """Create the EMA copy, after any data-dependent initialisation has set the model up."""
        if self.ema is None and self.config.ema_decay is not None:
            self.ema = make_ema(self.model, self.config.ema_decay)

    def _module(self, n_bins: int) -> nn.Module:
        """The (DDP-wrapped, in a process group) objective module of the current phase, rebuilt when it changes."""
        if self._wrapped is None or self._wrapped_key != (n_bins, self.phase):
            wrapped = ObjectiveModule(self.model, self._objectives[self.phase], n_bins)
            self._wrapped, self._wrapped_key = distributed.wrap(wrapped, self.device), (n_bins, self.phase)
        return self._wrapped

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step of the current phase on this process's share ``batch`` of the global batch.

        Gradients are averaged over accumulation micro-batches and processes. A step whose loss or gradient norm
        is not finite is skipped (parameters, optimiser and EMA untouched), counted in ``skipped_steps`` and
        logged; ``max_bad_steps`` of them in a row raise ``FloatingPointError``. Returns the step's metrics
        averaged over processes; the step's only host synchronisation is reading them back.
        """
        if self.step == 0 and self._wrapped is None:  # data-dependent initialisation, before DDP copies it
            with torch.no_grad(), self._autocast():
                self.model.initialize_from_data(batch.v)
                self._objectives[self.phase](self.model, batch)
        self.ensure_ema()
        module = self._module(batch.n_bins)
        self.model.train()
        self._apply_rates()
        self.optimizer.zero_grad(set_to_none=True)
        chunks = batch.chunk(self.config.accumulation)
        sums: dict[str, torch.Tensor] = {}
        for i, chunk in enumerate(chunks):
            sync = i == len(chunks) - 1 or not isinstance(module, DistributedDataParallel)
            with (contextlib.nullcontext() if sync else module.no_sync()), self._autocast():
                loss, metrics = module(chunk.v, chunk.y)
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
        if reduced[-1] != 1.0:
            self._skip_step()
        else:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self._bad_run = 0
        self.step += 1
        result["lr"] = self.optimizer.param_groups[0]["lr"]
        result["skipped_steps"] = float(self.skipped_steps)
        return result

    def _skip_step(self) -> None:
        """Skip a non-finite step (said once per run of them); ``max_bad_steps`` in a row stop the run."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self._bad_run += 1
        if self._bad_run == 1:
            rank_zero_warn(f"step {self.step}: non-finite loss or gradient, skipped (as are the next such steps)")
        if self._bad_run >= self.config.max_bad_steps:
            raise FloatingPointError(
                f"the last {self._bad_run} steps all produced non-finite losses or gradients (step {self.step}); "
                "lower the learning rate, use float32/float64, or check the data")

    def _batch(self, x: torch.Tensor, y: torch.Tensor | None, n_bins: int) -> Batch:
        return make_batch(x, n_bins, step_generator(self.config.seed, self.step, NOISE), hflip=self.config.hflip,
                          dtype=self.dtype, device=self.device, y=y)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def eval_model(self) -> FlowModel:
        """The weights that evaluation, samples and reports use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, data: ImageData, *, use_ema: bool = True, **options: Any) -> dict[str, Any]:
        """Mean BPD over all of ``data`` (shared among processes), overall and per level, by
        :func:`flowplug.train.evaluation.evaluate` with the run's seed, batch size, dtype and device (``options``:
        its other keyword arguments, e.g. ``tolerance``)."""
        return evaluate(self.eval_model() if use_ema else self.model, data, seed=self.config.seed,
                        batch_size=self.config.eval_batch_size, dtype=self.dtype, device=self.device,
                        autocast=self._autocast(), **options)

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float | None = None, y: torch.Tensor | int | None = None,
               guidance: float = 0.0) -> torch.Tensor:
        """Images from the EMA model (or the model without EMA), seeded by the current step; a label-conditional
        model's are of class ``y`` (one label or one per image; default ``0, 1, …, K−1, 0, …``), ``guidance``d
        if not 0 (a model that :attr:`~flowplug.FlowModel.can_guide`)."""
        model = self.eval_model()
        model.eval()
        labels = grid_labels(model, num_samples, self.device) if y is None else y
        options = {**({} if labels is None else {"y": labels}), **({"guidance": guidance} if guidance else {})}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed + self.step)
            return model.sample_images(num_samples, temperature=temperature, **options)

    @classmethod
    def restore(cls, checkpoint: Checkpoint, *, device: str | torch.device = "auto") -> Trainer:
        """A trainer holding ``checkpoint`` (its model, weights, EMA, step and options; no progress bar, no run
        folder) for evaluating or sampling it. Unknown names in the stored options are refused before building."""
        config = TrainConfig.from_dict({**(checkpoint.trainer_config or {}), "progress": False})
        trainer = cls(build_model(checkpoint), config, device=device)
        state.load_into(trainer, checkpoint, checkpoint.data)
        return trainer

    def latest_checkpoint(self) -> Path | None:
        """The highest-step checkpoint in the run folder, if any."""
        return self.folder.latest() if self.folder is not None else None

    def _score(self, val: ImageData, final: bool = False) -> dict[str, Any]:
        """Evaluate ``val`` in ``fit``: it joins the curve (a ``final`` one unless a point has its step), the best."""
        result = self.evaluate(val)
        bpd = result["bpd"]
        if not (final and self.curve and self.curve[-1]["step"] == self.step):
            self.curve.append({"step": self.step, "train_time_s": round(self.budget.spent_s, 3), "bpd": bpd})
        self._last_eval_finite = math.isfinite(bpd)
        if self._last_eval_finite and (self.best_val_bpd is None or bpd < self.best_val_bpd):
            self.best_val_bpd = bpd
        return result

    def fit(
        self,
        train: ImageData,
        val: ImageData | None = None,
        *,
        resume: bool | str | Path | Checkpoint = False,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Train on ``train`` until the budget is spent; returns the final report.

        ``resume=True`` continues from the newest intact checkpoint in ``out_dir`` (falling back past a corrupt
        one, saying so; starting afresh if there is none); a path or a loaded ``Checkpoint`` from that one. Without
        ``resume``, an ``out_dir`` that already holds a run is refused unless ``overwrite=True``, which deletes
        that run's files first. On resume, changed options are applied and recorded or refused
        (:mod:`flowplug.train.state`). A new run seeds torch's global generator with the
        config's ``seed``. The report holds the held-out BPD (overall and per level, on ``val`` when given),
        steps, time, NFE, parameter count and the ``eval_points`` curve. Ctrl-C saves a checkpoint (with a run
        folder) and says how to resume before ``KeyboardInterrupt`` goes on.
        """
        cfg = self.config
        data_info = state.check_data(self, train, val)
        if self.folder is not None and not resume:
            self.folder.claim(overwrite)
            distributed.barrier()  # every rank has looked at the folder before rank 0 writes to it
        if resume:
            state.resume(self, resume, data_info)
        elif self.step == 0:
            torch.manual_seed(cfg.seed)
        if self.folder is not None:
            self._logger = MetricsLogger(self.folder, cfg.tensorboard, after_step=self.step if resume else None)
            self.folder.write_config(state.run_config(self, data_info))
        self.budget = Budget(self.total_steps, cfg.minutes, cfg.clock, self.device)
        start_step, self._fit_started = self.step, time.monotonic()
        progress_bar = Progress(self.total_steps, self.step, cfg.progress)
        progress = self.budget.progress(self.step)  # one reading (one decision for all processes) per step
        quarters = None if cfg.checkpoint_every is not None or self.folder is None else _QUARTERS
        points, last = BudgetPoints(cfg.eval_points if val is not None else None, quarters, progress), {}
        try:
            for x, y in batches(train, cfg.batch_size, cfg.seed, self.step):
                if progress >= 1.0:
                    break
                advance_phases(self, progress)
                with self.budget.training():
                    last = self.train_step(self._batch(x, y, train.n_bins))
                progress_bar.update(last)
                progress = self.budget.progress(self.step)
                self._after_step(last, val, data_info, points, progress)
        except (FloatingPointError, ODESolverError) as error:
            raise type(error)(f"{error}; {state.resume_hint(self)}") from error
        except KeyboardInterrupt:
            state.save_on_interrupt(self, data_info)
            raise
        finally:
            progress_bar.close()
        last = last or (self._logger.rows(self.step, "train") if self._logger is not None else {})  # none this run
        report = run_report(self, last, time.monotonic() - self._fit_started, self.step - start_step, data_info)
        if val is not None:
            report["held_out"], report["curve"] = self._score(val, final=True), self.curve
        if self.folder is not None:
            state.save(self, data_info, report.get("held_out", {}).get("bpd"))
            write_report(report, self.folder)
            self._save_samples()
            self._logger.close()
        return report

    def _after_step(self, metrics: dict[str, float], val: ImageData | None, data_info: dict[str, Any],
                    points: BudgetPoints, progress: float) -> None:
        elapsed = self.elapsed()
        if self._logger is not None and self._every(self.config.log_every):
            self._logger.log(self.step, elapsed, "train", metrics)
        val_bpd = None
        if val is not None and (self._every(self.config.eval_every) or points.evaluation_due(progress)):
            result = self._score(val)
            val_bpd = result["bpd"]
            if self._logger is not None:
                self._logger.log(self.step, elapsed, "val", {
                    "bpd": val_bpd, **{f"bpd_level{i}": b for i, b in enumerate(result["per_level_bpd"])}})
        if self.folder is None:
            return
        if self._every(self.config.sample_every):
            self._save_samples()
        new_best = val_bpd is not None and val_bpd == self.best_val_bpd
        if self._every(self.config.checkpoint_every) or points.checkpoint_due(progress) or new_best:
            state.save(self, data_info, val_bpd)

    def _every(self, interval: int | None) -> bool:
        return interval is not None and self.step % interval == 0

    def _save_samples(self) -> None:
        v = self.sample(self.config.num_samples, self.config.temperature)
        save_samples(v, self.folder.samples(self.step, self.config.temperature), columns=self.model.num_classes)
