"""No host synchronisation per ODE function evaluation in flowplug's code.

torchdiffeq's fixed-grid loop reads each step's time on the host (one sync per solver step, whatever flowplug
does); flowplug adds none per function evaluation, so four times the evaluations add at most one sync per extra
solver step.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import flowplug
from flowplug.data import Batch
from flowplug.train import TrainConfig, Trainer

SYNC_OPS = ("aten::_local_scalar_dense",)
"""The op behind every ``.item()``, ``float(t)`` and ``bool(t)``: the host waits for the device."""


def _syncs_per_step(step_size: float, check_finite: bool = False) -> int:
    torch.manual_seed(0)
    solver = {"method": "rk4", "step_size": step_size}
    spec = {"type": "cnf", "net": {"type": "conv_odenet", "channels": 3, "hidden_channels": 4,
                                   "context_channels": 1}, "train_solver": solver, "check_finite": check_finite}
    top = {**spec, "net": {"type": "conv_odenet", "channels": 1, "hidden_channels": 4}}
    model = flowplug.MRCNF((1, 4, 4), levels=2, level_flows=[[spec], [top]])
    config = TrainConfig(steps=10, batch_size=8, ema_decay=None, progress=False, tensorboard=False)
    trainer = Trainer(model, config, device="cpu")
    batch = Batch(torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)), 4)
    trainer.train_step(batch)  # the first step initialises; count a steady one
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step(batch)
    return sum(event.count for event in prof.key_averages() if event.key in SYNC_OPS)


def test_syncs_per_step_do_not_grow_with_function_evaluations():
    # rk4: 2 steps (8 evaluations) or 8 steps (32 evaluations) per solve; one density solve per level
    coarse, fine = _syncs_per_step(0.5), _syncs_per_step(0.125)
    extra_solver_steps = 2 * (8 - 2)
    assert fine - coarse <= extra_solver_steps, (coarse, fine)
    evaluations = 2 * 8
    assert _syncs_per_step(0.5, check_finite=True) >= coarse + evaluations  # the opt-in check syncs per evaluation
