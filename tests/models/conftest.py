"""Tiny MRCNF configurations shared by the model tests."""

import pytest

TINY_SOLVER = {"method": "rk4", "step_size": 0.5}


@pytest.fixture
def tiny_cnf_options():
    """Conv nets 8 wide and 2 deep, a fixed-step solver, exact trace: fast and deterministic."""
    return {
        "hidden_channels": 8,
        "num_layers": 2,
        "divergence": "exact",
        "train_solver": TINY_SOLVER,
        "eval_solver": TINY_SOLVER,
    }
