"""The log-density accumulator's tolerance is per dimension (``D · atol`` for a sum over ``D`` dimensions): its
error per dimension stays of the order of the state's, and the solve takes no extra steps to hold the sum to one
dimension's tolerance.
(The adjoint path, whose backward solve keeps the plain tolerance, is covered by test_cnf_gradients.py.)"""

from __future__ import annotations

import pytest
import torch

from flowplug.cnf import CNF
from flowplug.cnf.solver import SolverSettings, solve

D = 48


class _Field:
    """``dz/dt = tanh(W z + b t)`` with ``W = −2 I + noise``: a contraction whose divergence
    ``Σ_i (1 − tanh²)_i W_ii`` (the second state's rate: a log-density accumulator starting at 0) is of order
    ``D`` and changes along the path; counts its calls."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(D, D, generator=generator, dtype=torch.float64) / D**0.5
        self.weight = noise - 2 * torch.eye(D, dtype=torch.float64)
        self.bias = torch.randn(D, generator=generator, dtype=torch.float64)
        self.calls = 0

    def __call__(self, t, state):
        self.calls += 1
        h = torch.tanh(state[0] @ self.weight.T + t * self.bias)
        return h, ((1 - h.square()) * self.weight.diagonal()).sum(dim=1)


class _ConvNet(torch.nn.Module):
    """``dz/dt = conv(z)``, a CNF net that ignores ``t``."""

    def __init__(self, conv: torch.nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, t, z, context=None):
        return self.conv(z)


def _solve(atol_scales, tol):
    field = _Field()
    z0 = 2 * torch.randn(6, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    settings = SolverSettings(atol=tol, rtol=tol)
    z, total = solve(field, (z0, z0.new_zeros(6)), 0.0, 1.0, settings, atol_scales=atol_scales)
    return z, total, field.calls


def test_per_dimension_tolerance_bounds_the_error_per_dimension_and_saves_steps():
    _, reference, _ = _solve(None, 1e-10)
    _, plain, plain_calls = _solve(None, 1e-5)
    _, per_dim, per_dim_calls = _solve((1.0, float(D)), 1e-5)

    # local errors of atol per dimension, accumulated over the solve's steps (as z's global error is)
    assert float((per_dim - reference).abs().max()) / D < 1e-3
    assert float((plain - reference).abs().max()) / D < 1e-3
    assert per_dim_calls < plain_calls


def test_a_cnf_solve_scales_only_the_log_density_tolerance(monkeypatch):
    seen = {}

    def record(func, state, t0, t1, settings, *, adjoint_params=None, atol_scales=None):
        seen["scales"] = tuple(atol_scales)
        return state

    monkeypatch.setattr("flowplug.cnf.flow.solve", record)
    net = torch.nn.Conv2d(2, 2, 1)
    cnf = CNF(_ConvNet(net), kinetic_energy=0.1, jacobian_norm=0.1)
    cnf.inverse(torch.randn(3, 2, 4, 4))
    assert seen["scales"] == (1.0, 32.0, 1.0, 1.0)


def test_atol_scales_must_match_the_state():
    with pytest.raises(ValueError, match="2 factors for 3 state tensors"):
        solve(lambda t, s: s, (torch.zeros(1), torch.zeros(1), torch.zeros(1)), 0.0, 1.0, SolverSettings(),
              atol_scales=(1.0, 2.0))
