"""Round trips and log-determinants of nonlinear CNFs against brute-force autograd Jacobians."""

import pytest
import torch
from torch.autograd.functional import jacobian

from flowplug.cnf import CNF, ConvODENet, MLPODENet


def _nets():
    return {
        "mlp": (lambda: MLPODENet(2, hidden_dim=8, context_dim=1), (2,), (1,)),
        "conv": (
            lambda: ConvODENet(1, hidden_channels=8, context_channels=1), (1, 2, 2), (1, 2, 2)
        ),
    }


@pytest.fixture(params=["mlp", "conv"])
def conditional_cnf(request, perturb, tight):
    make_net, shape, context_shape = _nets()[request.param]
    torch.manual_seed(0)
    net = perturb(make_net().double(), std=0.5)
    return CNF(net, T=1.0, divergence="exact", train_solver=tight), shape, context_shape


def test_new_cnf_is_the_identity():
    cnf = CNF(ConvODENet(2, hidden_channels=8), train_solver={"method": "rk4", "step_size": 0.5})
    x = torch.randn(3, 2, 4, 4)
    for direction in (cnf.inverse, cnf.forward):
        out, log_det = direction(x)
        assert torch.equal(out, x)
        assert torch.equal(log_det, torch.zeros(3))


def test_round_trip_and_log_dets_cancel(conditional_cnf):
    cnf, shape, context_shape = conditional_cnf
    x = torch.randn(4, *shape, dtype=torch.float64)
    context = torch.randn(4, *context_shape, dtype=torch.float64)

    z, log_det = cnf.inverse(x, context)
    x_back, log_det_back = cnf.forward(z, context)

    assert (z - x).abs().max() > 0.05  # the flow does move the data
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros(4, dtype=torch.float64),
                               atol=1e-9, rtol=0)


def test_log_det_matches_brute_force_jacobian(conditional_cnf):
    cnf, shape, context_shape = conditional_cnf
    x = torch.randn(1, *shape, dtype=torch.float64)
    context = torch.randn(1, *context_shape, dtype=torch.float64)
    dim = x.numel()

    _, log_det = cnf.inverse(x, context)
    full = jacobian(lambda v: cnf.inverse(v, context)[0], x).reshape(dim, dim)
    expected = torch.linalg.slogdet(full).logabsdet
    torch.testing.assert_close(log_det[0], expected, atol=1e-8, rtol=0)

    _, log_det_sample = cnf.forward(x, context)
    full = jacobian(lambda v: cnf.forward(v, context)[0], x).reshape(dim, dim)
    torch.testing.assert_close(log_det_sample[0], torch.linalg.slogdet(full).logabsdet,
                               atol=1e-8, rtol=0)


def test_hutchinson_does_not_change_the_map(conditional_cnf):
    cnf, shape, context_shape = conditional_cnf
    x = torch.randn(3, *shape, dtype=torch.float64)
    context = torch.randn(3, *context_shape, dtype=torch.float64)
    z_exact, _ = cnf.inverse(x, context)
    cnf.divergence = "hutchinson"
    z_hutchinson, _ = cnf.inverse(x, context)
    torch.testing.assert_close(z_hutchinson, z_exact, atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_dtype_and_returns_per_sample_log_det(dtype, perturb):
    net = perturb(MLPODENet(3, hidden_dim=8)).to(dtype)
    cnf = CNF(net, train_solver={"method": "rk4", "step_size": 0.5})
    x = torch.randn(5, 3, dtype=dtype)
    for out, log_det in (cnf.inverse(x), cnf.forward(x)):
        assert out.dtype == dtype and out.shape == x.shape
        assert log_det.dtype == dtype and log_det.shape == (5,)
