"""Bad input, bad settings and failing solves raise clear errors (and never hang)."""

import math

import pytest
import torch
from torch import nn

from flowplug.cnf import CNF, ConvODENet, MLPODENet, ODESolverError, SolverSettings

RK4 = {"method": "rk4", "step_size": 0.5}


class _JumpNet(nn.Module):
    """dz/dt jumps by 1e20 at t = 0.5: no adaptive step is small enough to resolve it."""

    def forward(self, t, z, context=None):
        return torch.zeros_like(z) + 1e20 * (t > 0.5).to(z.dtype)


class _CubicNet(nn.Module):
    """dz/dt = z³ blows up in finite time (at t = 1/(2 z0²))."""

    def forward(self, t, z, context=None):
        return z**3


@pytest.mark.parametrize("where", ["input", "context"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_or_context(where, bad):
    cnf = CNF(MLPODENet(2, context_dim=1), train_solver=RK4)
    x, context = torch.zeros(3, 2), torch.zeros(3, 1)
    (x if where == "input" else context)[1, 0] = bad
    with pytest.raises(ValueError, match=rf"CNF {where} holds 1 non-finite value.*index \(1, 0\)"):
        cnf.inverse(x, context)


def test_state_diverging_during_the_solve_is_named():
    cnf = CNF(_CubicNet(), divergence="exact", train_solver=RK4, check_finite=True)
    message = r"non-finite ODE state .* method='rk4', step_size=0.5"
    with pytest.raises(ODESolverError, match=message):
        cnf.inverse(torch.full((2, 2), 10.0))


def test_step_size_underflow_names_solver_and_tolerances():
    cnf = CNF(_JumpNet(), divergence="exact", train_solver={"atol": 1e-6, "rtol": 1e-4})
    with pytest.raises(ODESolverError, match=r"underflow in dt.*method='dopri5', atol=1e-06, "
                       r"rtol=0.0001.*loosen atol/rtol, use a fixed-step solver"):
        cnf.inverse(torch.randn(2, 2))


def test_too_many_steps_is_named():
    cnf = CNF(_JumpNet(), divergence="exact", train_solver={"options": {"max_num_steps": 5}})
    with pytest.raises(ODESolverError, match=r"max_num_steps exceeded.*method='dopri5'"):
        cnf.inverse(torch.randn(2, 2))


def test_missing_context():
    cnf = CNF(ConvODENet(1, hidden_channels=8, context_channels=2), train_solver=RK4)
    message = r"ConvODENet needs context, but none was given .*\(2, 1, 4, 4\)"
    with pytest.raises(ValueError, match=message):
        cnf.inverse(torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize(
    ("net", "x", "context", "message"),
    [
        (ConvODENet(1, context_channels=2), torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 4, 4),
         r"context has shape \(2, 3, 4, 4\), expected \(2, 2, 4, 4\) "
         r"for z of shape \(2, 1, 4, 4\)"),
        (ConvODENet(1, context_channels=2), torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 2, 2),
         r"context has shape \(2, 2, 2, 2\), expected \(2, 2, 4, 4\)"),
        (MLPODENet(2, context_dim=1), torch.zeros(2, 2), torch.zeros(2, 3),
         r"context has shape \(2, 3\), expected \(2, 1\)"),
        (MLPODENet(2, context_dim=1), torch.zeros(2, 2), torch.zeros(3, 1),
         r"context of shape \(3, 1\) does not match the batch size of the input of shape \(2, 2\)"),
        (MLPODENet(2), torch.zeros(2, 2), torch.zeros(2, 1),
         r"MLPODENet was built without context inputs but got context of shape \(2, 1\)"),
        (MLPODENet(2), torch.zeros(2, 3), None,
         r"MLPODENet expects z of shape \(B, 2\), got \(2, 3\)"),
        (ConvODENet(3), torch.zeros(2, 3, 4), None,
         r"expects z of shape \(B, 3, H, W\), got \(2, 3, 4\)"),
    ],
)
def test_wrong_shapes_are_named(net, x, context, message):
    with pytest.raises(ValueError, match=message):
        CNF(net, train_solver=RK4).inverse(x, context)


def test_wrong_context_dtype_and_integer_input():
    cnf = CNF(MLPODENet(2, context_dim=1), train_solver=RK4)
    message = r"context is torch\.float64 on cpu but the input is torch\.float32"
    with pytest.raises(TypeError, match=message):
        cnf.inverse(torch.zeros(2, 2), torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point dtype"):
        cnf.inverse(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 1))


def test_net_returning_the_wrong_shape():
    class Bad(nn.Module):
        def forward(self, t, z, context=None):
            return z[:, :1]

    message = r"returned dz/dt of shape \(2, 1\) for z of shape \(2, 2\)"
    with pytest.raises(ValueError, match=message):
        CNF(Bad(), train_solver=RK4).inverse(torch.zeros(2, 2))


def test_net_time_shape_is_checked():
    message = r"time t must be a scalar or have shape \(B,\) = \(3,\), got shape \(2,\)"
    with pytest.raises(ValueError, match=message):
        MLPODENet(2)(torch.zeros(2), torch.zeros(3, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"method": "dopri6"}, ValueError, "unknown ODE solver method 'dopri6'; torchdiffeq"),
        ({"method": "rk4"}, ValueError, "fixed-step solver 'rk4' needs step_size"),
        ({"step_size": 0.1}, ValueError, "step_size applies only to fixed-step methods"),
        ({"atol": 0}, ValueError, "solver atol must be a positive number, got 0"),
        ({"method": "euler", "step_size": -1.0}, ValueError, "step_size must be a positive number"),
        ({"options": ["x"]}, TypeError, "solver options must be a dict, got list"),
    ],
)
def test_bad_solver_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        SolverSettings(**kwargs)


def test_bad_flow_and_net_arguments():
    with pytest.raises(ValueError, match="unknown solver setting"):
        CNF(MLPODENet(2), train_solver={"method": "rk4", "stepsize": 0.1})
    message = r"unknown divergence 'trace'; expected one of \('hutchinson', 'exact'\)"
    with pytest.raises(ValueError, match=message):
        CNF(MLPODENet(2), divergence="trace")
    with pytest.raises(ValueError, match="unknown Hutchinson probe 'uniform'"):
        CNF(MLPODENet(2), probe="uniform")
    with pytest.raises(ValueError, match="integration time T must be a positive finite number, got 0"):
        CNF(MLPODENet(2), T=0)
    with pytest.raises(TypeError, match=r"net must be an nn\.Module"):
        CNF(lambda t, z: z)
    with pytest.raises(ValueError, match="non-smooth activation 'relu'"):
        MLPODENet(2, activation="relu")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvODENet(2, kernel_size=2)
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer, got 0"):
        MLPODENet(2, hidden_dim=0)


def test_an_infinite_integration_time_is_refused():
    with pytest.raises(ValueError, match="integration time T must be a positive finite number, got inf"):
        CNF(MLPODENet(2), T=math.inf)
