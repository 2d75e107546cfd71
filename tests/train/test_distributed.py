"""Two Gloo processes give the same global loss and gradients as one process on the whole batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import free_port, tiny_glow

from flowplug.data import Batch
from flowplug.train import TrainConfig, Trainer

CONFIG = {"steps": 1, "precision": "float64", "ema_decay": None, "grad_clip": None,
          "progress": False, "tensorboard": False}


def _step(state_path, v):
    model = tiny_glow().double()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    trainer = Trainer(model, TrainConfig(**CONFIG), device="cpu")
    metrics = trainer.train_step(Batch(v, 4))
    return metrics["loss"], torch.cat([p.grad.flatten() for p in model.parameters()])


def _worker(rank, port, state_path, v, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        loss, grad = _step(state_path, v.chunk(2)[rank])
        torch.save({"loss": loss, "grad": grad}, out.format(rank))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path):
    v = torch.rand(8, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = tiny_glow().double()
    model.log_prob(v)  # ActNorm's data-dependent initialisation, shared by all runs
    state_path = tmp_path / "state.pt"
    torch.save(model.state_dict(), state_path)
    out = str(tmp_path / "rank{}.pt")
    mp.spawn(_worker, args=(free_port(), state_path, v, out), nprocs=2, join=True)
    loss, grad = _step(state_path, v)
    for rank in (0, 1):
        result = torch.load(out.format(rank), weights_only=True)
        assert abs(result["loss"] - loss) < 1e-12
        torch.testing.assert_close(result["grad"], grad, rtol=1e-10, atol=1e-12)
