"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest
import torch

from flowplug.data import ImageData


@pytest.fixture
def tiny_data() -> ImageData:
    """64 images 2x4x4 with 4 levels: a smooth ramp plus noise, so there is something to learn."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 3, 4).view(1, 1, 1, 4)
    x = (ramp + torch.randn(64, 2, 4, 4, generator=generator) * 0.5).round().clamp(0, 3)
    return ImageData(x.to(torch.uint8), 4, "tiny")
