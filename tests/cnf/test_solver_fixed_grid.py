"""Fixed-grid solves of an exact number of steps (``SolverSettings(steps=N)``)."""

from __future__ import annotations

import math

import pytest
import torch

from flowplug.cnf.solver import SolverSettings, solve


@pytest.mark.parametrize("interval", [(0.0, 1.0), (1.0, 0.0), (0.0, 0.3), (0.3, 0.0), (0.0, 1.7)])
@pytest.mark.parametrize("steps", [1, 5, 10, 19, 49])
def test_steps_gives_exactly_that_many_steps_where_step_size_can_give_one_more(interval, steps):
    calls = []

    def decay(t, state):
        calls.append(float(t))
        return (-state[0],)

    t0, t1 = interval
    (end,) = solve(decay, (torch.ones(1, dtype=torch.float64),), t0, t1, SolverSettings("rk4", steps=steps))
    assert len(calls) == 4 * steps  # rk4: four evaluations per step
    h = (t1 - t0) / steps
    exact_rk4_factor = 1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24  # rk4's amplification for dy/dt = -y
    assert float(end) == pytest.approx(exact_rk4_factor**steps, rel=1e-12)


def test_step_size_alone_can_take_an_extra_step():
    """Why ``steps`` exists: 0.3 / (0.3 / 10) is not 10 in floating point, and torchdiffeq's grid then ends with a
    sliver of a step."""
    calls = []

    def decay(t, state):
        calls.append(float(t))
        return (-state[0],)

    solve(decay, (torch.ones(1),), 0.0, 0.3, SolverSettings("rk4", step_size=0.3 / 10))
    assert len(calls) == 4 * 11


def test_steps_round_trips_through_a_spec_and_is_left_out_when_unset():
    settings = SolverSettings("rk4", steps=8)
    assert settings.to_dict()["steps"] == 8 and SolverSettings.coerce(settings.to_dict()) == settings
    assert "steps" not in SolverSettings().to_dict()  # older specs and checkpoints read the same
    assert settings.describe() == "method='rk4', steps=8"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "rk4"}, "needs step_size .* or steps .*, one of them"),
        ({"method": "rk4", "steps": 4, "step_size": 0.25}, "one of them"),
        ({"method": "dopri5", "steps": 4}, "steps applies only to fixed-step methods"),
        ({"method": "rk4", "steps": 0}, "solver steps must be a positive integer, got 0"),
        ({"method": "rk4", "steps": 2.5}, "solver steps must be a positive integer, got 2.5"),
        ({"method": "rk4", "steps": True}, "solver steps must be a positive integer, got True"),
    ],
)
def test_bad_steps_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SolverSettings(**kwargs)


def test_steps_converge_at_fourth_order():
    errors = []
    for steps in (4, 8):
        (end,) = solve(lambda t, y: (-y[0],), (torch.ones(1, dtype=torch.float64),), 0.0, 1.0,
                       SolverSettings("rk4", steps=steps))
        errors.append(abs(float(end) - math.exp(-1)))
    assert 12 < errors[0] / errors[1] < 20  # 2^4 = 16
