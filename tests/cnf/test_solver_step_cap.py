"""An adaptive solve has a step cap: a diverged model's evaluation ends with an error instead of running on."""

from __future__ import annotations

import pytest
import torch

from flowplug.cnf import CNF, SolverSettings
from flowplug.cnf.solver import MAX_ADAPTIVE_STEPS, ODESolverError


class _Stiff(torch.nn.Module):
    """dz/dt = -k z with a huge k: dopri5 at a tight tolerance needs far more steps than the cap allows."""

    needs_context = False

    def forward(self, t: torch.Tensor, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return -1e7 * z * (1 + torch.sin(1e4 * t))


def test_adaptive_solvers_get_the_default_cap_and_fixed_step_ones_none():
    assert SolverSettings().odeint_kwargs()["options"]["max_num_steps"] == MAX_ADAPTIVE_STEPS
    assert SolverSettings(options={"max_num_steps": 7}).odeint_kwargs()["options"]["max_num_steps"] == 7
    assert "max_num_steps" not in SolverSettings(method="rk4", step_size=0.5).odeint_kwargs()["options"]


def test_a_solve_past_the_cap_raises_an_error_naming_the_settings():
    solver = {"method": "dopri5", "atol": 1e-9, "rtol": 1e-9, "options": {"max_num_steps": 50}}
    cnf = CNF(_Stiff(), divergence="exact", train_solver=solver, eval_solver=solver).eval()
    with pytest.raises(ODESolverError, match=r"max_num_steps exceeded.*method=.dopri5."):
        with torch.no_grad():
            cnf.inverse(torch.randn(2, 3, dtype=torch.float64))
