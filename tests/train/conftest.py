"""Tiny models and data shared by the training tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from flowplug.data import ImageData
from flowplug.models.baselines import Glow

TINY_GLOW = {"image_shape": [2, 4, 4], "levels": 1, "depth": 2, "hidden_channels": 8}


def tiny_glow(seed: int = 0) -> Glow:
    torch.manual_seed(seed)
    return Glow(**TINY_GLOW)


@pytest.fixture
def tiny_data() -> ImageData:
    """64 images 2x4x4 with 4 levels: a smooth ramp plus noise, so there is something to learn."""
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
