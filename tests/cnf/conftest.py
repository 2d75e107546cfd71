"""Shared pieces of the CNF tests: linear dynamics with known solutions, and nets moved off zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def tight():
    """Solver settings under which float64 solves are accurate to ~1e-9."""
    return {"method": "dopri5", "atol": 1e-11, "rtol": 1e-11}


class LinearNet(nn.Module):
    """``f(t, z) = A z`` on flattened ``z``: the flow is ``expm(t A)``, its log-det ``t tr(A)``."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix)

    def forward(self, t, z, context=None):
        return (z.reshape(z.shape[0], -1) @ self.matrix.T).reshape(z.shape)


@pytest.fixture
def linear_net():
    """Factory: a float64 ``LinearNet`` on ``dim`` dimensions with a fixed random matrix."""

    def make(dim: int, seed: int = 0) -> LinearNet:
        generator = torch.Generator().manual_seed(seed)
        return LinearNet(0.5 * torch.randn(dim, dim, generator=generator, dtype=torch.float64))

    return make


@pytest.fixture
def perturb():
    """Give a built-in net's zero-initialised last layer random weights (a non-identity flow)."""

    def apply(net: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
        generator = torch.Generator().manual_seed(seed)
        last = net.layers[-1]
        with torch.no_grad():
            for tensor in (last.weight, last.bias):
                noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.copy_(std * noise)
        return net

    return apply
