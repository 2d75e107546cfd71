"""Tiny models and metric reading shared by the training tests (imported as a plain module: a
``from conftest import ...`` would pick whichever conftest.py was imported first)."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import torch

from flowplug.data import ImageData
from flowplug.models.base import FlowModel
from flowplug.models.baselines import Glow

TINY_GLOW = {"image_shape": [2, 4, 4], "levels": 1, "depth": 2, "hidden_channels": 8}


def tiny_glow(seed: int = 0) -> Glow:
    torch.manual_seed(seed)
    return Glow(**TINY_GLOW)


def tiny_images() -> ImageData:
    """The images of conftest's ``tiny_data`` fixture, for fixtures of a wider scope than a test."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 3, 4).view(1, 1, 1, 4)
    x = (ramp + torch.randn(64, 2, 4, 4, generator=generator) * 0.5).round().clamp(0, 3)
    return ImageData(x.to(torch.uint8), 4, "tiny")


def read_metric(folder: Path, name: str, split: str = "train") -> dict[int, float]:
    """``{step: value}`` of one metric from a run folder's metrics.csv."""
    with (folder / "metrics.csv").open() as file:
        rows = csv.DictReader(file)
        return {int(r["step"]): float(r["value"]) for r in rows
                if r["metric"] == name and r["split"] == split}


class ToyModel(FlowModel):
    """A one-parameter model of 2x4x4 images for trainer tests; subclasses define ``log_prob``."""

    image_shape = (2, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def sample(self, num_samples=1, temperature=None):
        v = torch.full((num_samples, *self.image_shape), 0.5) + 0 * self.weight
        return v, torch.zeros(num_samples)


class Exploding(ToyModel):
    """A 'model' whose log-likelihood is NaN after ``start`` calls (``None``: never)."""

    def __init__(self, start: int | None) -> None:
        super().__init__()
        self.calls, self.start = 0, start
        self.config = {"type": "exploding"}

    def log_prob(self, v):
        self.calls += 1
        value = -(v - self.weight).pow(2).flatten(1).sum(1)
        return value * float("nan") if self.start is not None and self.calls > self.start else value


def free_port() -> int:
    """A free TCP port on the loopback interface, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupt_at(trainer, step):
    """Make ``trainer``'s training raise KeyboardInterrupt (Ctrl-C) once ``step`` steps are done."""
    train_step = trainer.train_step

    def interrupted(batch):
        if trainer.step == step:
            raise KeyboardInterrupt
        return train_step(batch)

    trainer.train_step = interrupted
