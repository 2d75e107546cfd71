"""CUDA paths: device selection, bf16 mixed precision, NCCL. Skipped where no GPU is present."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import tiny_glow

from flowplug.data import Batch
from flowplug.train import TrainConfig, Trainer, resolve_device

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FAST = {"batch_size": 16, "progress": False, "tensorboard": False, "warmup_steps": 2}


def test_auto_picks_cuda_and_bf16_for_discrete_flows(tiny_data):
    assert resolve_device("auto").type == "cuda"
    trainer = Trainer(tiny_glow(), TrainConfig(steps=10, **FAST), device="auto")
    assert trainer.precision == "bf16"
    report = trainer.fit(tiny_data)
    assert report["skipped_steps"] == 0 and report["device"].startswith("cuda")
    assert next(trainer.model.parameters()).dtype == torch.float32


def test_float32_on_cuda_matches_cpu_loss(tiny_data):
    v = torch.rand(16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    losses = []
    for device in ("cpu", "cuda"):
        trainer = Trainer(tiny_glow(), TrainConfig(steps=1, precision="float32", **FAST),
                          device=device)
        losses.append(trainer.train_step(Batch(v.to(device), 4))["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    try:
        trainer = Trainer(tiny_glow(), TrainConfig(steps=1, precision="float32", **FAST),
                          device="cuda")
        assert dist.get_backend() == "nccl"
        v = torch.rand(16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        metrics = trainer.train_step(Batch(v.chunk(2)[rank].to(trainer.device), 4))
        torch.save(metrics["loss"], out.format(rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL test needs two GPUs")
def test_nccl_two_processes_agree(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank{}.pt")
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    assert torch.load(out.format(0)) == torch.load(out.format(1))
