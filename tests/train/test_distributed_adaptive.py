"""Two Gloo processes, likelihood objective, adaptive solver: no hang, and the loss curve of one process."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import free_port

import flowplug
from flowplug.data import Batch
from flowplug.train import TrainConfig, Trainer
from flowplug.train.evaluation import count_nfe

pytestmark = pytest.mark.slow

MRCNF = {"type": "mrcnf", "image_shape": [2, 4, 4], "levels": 2, "hidden_channels": 4, "divergence": "exact"}
TIGHT, LOOSE = 1e-8, 1e-4
"""dopri5 tolerances: rank 0 solves tightly, rank 1 loosely, so the ranks take different numbers of steps."""
STEPS = 3
CONFIG = {"steps": STEPS, "batch_size": 16, "precision": "float64", "ema_decay": None, "warmup_steps": 0,
          "schedule": "constant", "lr": 1e-2, "progress": False, "tensorboard": False}


def _batches():
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.1, 0.9, 4).view(1, 1, 1, 4)
    return [(ramp + 0.15 * torch.randn(16, 2, 4, 4, generator=generator, dtype=torch.float64)).clamp(0.01, 0.99)
            for _ in range(STEPS)]


def _curve(state_path, tol, share=lambda v: v):
    """Per-step global losses and this process's NFE of a likelihood run on the fixed global batches, its
    training solves made with dopri5 at tolerance ``tol``."""
    solver = {"method": "dopri5", "atol": tol, "rtol": tol}
    model = flowplug.build({**MRCNF, "train_solver": solver}).double()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    trainer = Trainer(model, TrainConfig(**CONFIG), device="cpu")
    losses, nfes = [], []
    for v in _batches():
        losses.append(trainer.train_step(Batch(share(v), 4))["loss"])
        nfes.append(count_nfe(model))
    return losses, nfes


def _worker(rank, port, state_path, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        losses, nfes = _curve(state_path, (TIGHT, LOOSE)[rank], share=lambda v: v.chunk(2)[rank])
        torch.save({"losses": losses, "nfes": nfes}, out.format(rank))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_with_an_adaptive_solver_match_one(tmp_path):
    """Likelihood objective, dopri5, exact trace (so every run is deterministic). Rank 0 solves its half of each
    global batch at tolerance 1e-8, rank 1 at 1e-4, so they take different numbers of solver steps. The curve
    must match a 1-process run on the whole batch at 1e-8 within the solver's own error, measured as the gap
    between 1-process runs at 1e-8 and 1e-4 (losses are float32 metrics: 1e-5 absolute on top)."""
    torch.manual_seed(0)
    model = flowplug.build(MRCNF).double()
    model.initialize_from_data(_batches()[0])
    state_path = tmp_path / "state.pt"
    torch.save(model.state_dict(), state_path)
    out = str(tmp_path / "rank{}.pt")
    context = mp.spawn(_worker, args=(free_port(), state_path, out), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two processes hung")
    ranks = [torch.load(out.format(r), weights_only=True) for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tight, _ = _curve(state_path, TIGHT)
        loose, _ = _curve(state_path, LOOSE)
    finally:
        torch.set_num_threads(threads)
    two = ranks[0]["losses"]
    assert ranks[0]["losses"] == ranks[1]["losses"]  # every rank reports the global mean
    assert ranks[0]["nfes"] != ranks[1]["nfes"]  # the ranks' adaptive solves took different step counts
    solver_noise = max(abs(a - b) for a, b in zip(tight, loose, strict=True))
    gap = max(abs(a - b) for a, b in zip(two, tight, strict=True))
    print(json.dumps({"nfes": [r["nfes"] for r in ranks], "solver_noise": solver_noise, "gap": gap,
                      "two_processes": two, "one_process": tight}))
    assert gap <= solver_noise + 1e-5
