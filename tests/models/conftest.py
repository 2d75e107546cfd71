"""Tiny MRCNF configurations shared by the model tests."""

import pytest

TINY_SOLVER = {"method": "rk4", "step_size": 0.5}


@pytest.fixture
def tiny_cnf_options():
    """Residual nets 8 wide with one block, a fixed-step solver, exact trace: fast and deterministic."""
    return {
        "hidden_channels": 8,
        "num_blocks": 1,
        "divergence": "exact",
        "train_solver": TINY_SOLVER,
        "eval_solver": TINY_SOLVER,
    }
