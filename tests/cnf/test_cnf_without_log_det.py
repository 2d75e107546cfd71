"""``without_log_det``: sampling solves of the state alone, with a NaN log-determinant and no divergence."""

import math

import pytest
import torch
from torch import nn

import flowplug.cnf.flow as flow_module
from flowplug.cnf import CNF, without_log_det


def test_the_state_alone_follows_the_same_ode_and_the_log_det_is_nan(linear_net, tight):
    net = linear_net(3)
    cnf = CNF(net, T=0.8, train_solver=tight)
    z = torch.randn(4, 3, dtype=torch.float64)
    with without_log_det(cnf):
        x, log_det = cnf.forward(z)
    expected = z @ torch.linalg.matrix_exp(-0.8 * net.matrix.detach()).T
    torch.testing.assert_close(x, expected, atol=1e-8, rtol=1e-8)
    assert log_det.shape == (4,) and bool(torch.isnan(log_det).all())


def test_density_passes_inside_the_block_keep_their_log_det(linear_net, tight):
    cnf = CNF(linear_net(3), divergence="exact", train_solver=tight)
    x = torch.randn(4, 3, dtype=torch.float64)
    outside = cnf.inverse(x)
    with without_log_det(cnf):
        inside = cnf.inverse(x)
    torch.testing.assert_close(inside, outside, atol=0, rtol=0)


@pytest.mark.parametrize("divergence", ["hutchinson", "exact"])
def test_on_a_fixed_grid_the_samples_are_those_of_the_full_solve(linear_net, divergence):
    cnf = CNF(linear_net(4, seed=2), divergence=divergence, train_solver={"method": "rk4", "steps": 3})
    z = torch.randn(5, 4, dtype=torch.float64)
    full, _ = cnf.forward(z)
    with without_log_det(cnf):
        alone, _ = cnf.forward(z)
    assert torch.equal(alone, full)
    assert cnf.last_nfe == 12


def test_no_divergence_is_computed(linear_net, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a divergence was computed")

    monkeypatch.setattr(flow_module, "hutchinson_divergence", refuse)
    monkeypatch.setattr(flow_module, "exact_divergence", refuse)
    cnf = CNF(linear_net(3), train_solver={"method": "rk4", "steps": 2})
    with without_log_det(cnf):
        cnf.forward(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(AssertionError, match="a divergence was computed"):
        cnf.forward(torch.randn(2, 3, dtype=torch.float64))


def test_the_setting_is_restored_after_an_error_and_reaches_every_cnf(linear_net):
    cnfs = nn.ModuleList([CNF(linear_net(3, seed=s), train_solver={"method": "rk4", "steps": 1}) for s in range(2)])
    z = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="inside"), without_log_det(cnfs):
        assert all(math.isnan(float(c.forward(z)[1][0])) for c in cnfs)
        raise RuntimeError("inside")
    assert all(bool(torch.isfinite(c.forward(z)[1]).all()) for c in cnfs)


def test_a_non_finite_state_is_reported_with_check_finite():
    class Blowup(nn.Module):
        def forward(self, t, z, context=None):
            return z * math.inf

    cnf = CNF(Blowup(), train_solver={"method": "rk4", "steps": 1}, check_finite=True)
    with without_log_det(cnf), pytest.raises(flow_module.ODESolverError, match="non-finite ODE state"):
        cnf.forward(torch.ones(1, 2, dtype=torch.float64))


def test_a_sample_solver_drives_the_solves_without_log_det_and_nothing_else(linear_net, tight):
    net = linear_net(4, seed=1)
    grid = {"method": "rk4", "steps": 2}
    cnf = CNF(net, T=0.7, train_solver=tight, sample_solver=grid).eval()
    on_the_grid = CNF(net, T=0.7, train_solver=grid).eval()
    z = torch.randn(5, 4, dtype=torch.float64)
    with without_log_det(cnf), without_log_det(on_the_grid):
        fast, _ = cnf.forward(z)
        assert cnf.last_nfe == 8
        assert torch.equal(fast, on_the_grid.forward(z)[0])
    exact = z @ torch.linalg.matrix_exp(-0.7 * net.matrix.detach()).T
    x, log_det = cnf.forward(z)  # the full solve: eval_solver
    torch.testing.assert_close(x, exact, atol=1e-8, rtol=1e-8)
    assert cnf.last_nfe > 8 and bool(torch.isfinite(log_det).all())
    torch.testing.assert_close(cnf.inverse(x)[0], z, atol=1e-8, rtol=1e-8)
    assert "sample_solver=(method='rk4', steps=2)" in repr(cnf)
    assert "sample_solver" not in repr(on_the_grid)
