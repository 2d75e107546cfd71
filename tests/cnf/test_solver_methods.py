"""flowplug's list of solver methods matches what torchdiffeq's public odeint accepts."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torchdiffeq import odeint

from flowplug.cnf.solver import FIXED_STEP_METHODS, METHODS, SolverSettings


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_listed_method_solves(method):
    if method == "scipy_solver" and importlib.util.find_spec("scipy") is None:
        pytest.skip("scipy_solver needs scipy")
    options = {"step_size": 0.25} if method in FIXED_STEP_METHODS else {}
    if method == "scipy_solver":
        options = {"solver": "RK45"}
    solution = odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64),
                      torch.tensor([0.0, 1.0], dtype=torch.float64), method=method, options=options)
    assert abs(float(solution[-1]) - torch.exp(torch.tensor(-1.0)).item()) < 0.1


def test_an_unknown_method_is_refused_by_torchdiffeq_and_by_the_settings():
    with pytest.raises(ValueError, match="Invalid method"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="not_a_method")
    with pytest.raises(ValueError, match="unknown ODE solver method 'not_a_method'"):
        SolverSettings(method="not_a_method")
