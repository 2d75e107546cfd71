"""Linear dynamics ``f(z) = A z``: the CNF must give ``expm(T A) z`` and ``log_det = T tr(A)``."""

import pytest
import torch

from flowplug.cnf import CNF


@pytest.mark.parametrize("shape", [(3,), (1, 2, 2)])
@pytest.mark.parametrize("T", [1.0, 0.7])
def test_exact_trace_gives_T_times_trace_and_matrix_exponential(linear_net, tight, shape, T):
    dim = torch.Size(shape).numel()
    net = linear_net(dim)
    cnf = CNF(net, T=T, divergence="exact", train_solver=tight)
    x = torch.randn(5, *shape, dtype=torch.float64)

    z, log_det = cnf.inverse(x)

    matrix = net.matrix.detach()
    expected_z = x.reshape(5, dim) @ torch.linalg.matrix_exp(T * matrix).T
    torch.testing.assert_close(z.reshape(5, dim), expected_z, atol=1e-8, rtol=1e-8)
    expected_log_det = torch.full((5,), T * float(matrix.trace()), dtype=torch.float64)
    torch.testing.assert_close(log_det, expected_log_det, atol=1e-10, rtol=0)

    x_back, log_det_back = cnf.forward(z)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-10, rtol=0)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(linear_net, probe):
    """For linear dynamics each estimate is ``T εᵀAε``: its mean over probes is ``T tr(A)``."""
    torch.manual_seed(0)
    net = linear_net(3, seed=1)
    cnf = CNF(net, T=1.0, probe=probe, train_solver={"method": "rk4", "step_size": 0.5})
    x = torch.randn(1, 3, dtype=torch.float64).expand(4000, 3)

    with torch.no_grad():
        _, log_det = cnf.inverse(x)

    trace = float(net.matrix.detach().trace())
    standard_error = float(log_det.std()) / len(log_det) ** 0.5
    assert standard_error > 0  # the estimates do vary with the probe
    assert abs(float(log_det.mean()) - trace) < 4 * standard_error


def test_rademacher_probe_has_lower_variance_than_gaussian(linear_net):
    net = linear_net(3, seed=1)
    x = torch.zeros(4000, 3, dtype=torch.float64)
    variances = {}
    for probe in ("rademacher", "gaussian"):
        torch.manual_seed(0)
        cnf = CNF(net, probe=probe, train_solver={"method": "euler", "step_size": 1.0})
        with torch.no_grad():
            variances[probe] = float(cnf.inverse(x)[1].var())
    assert variances["rademacher"] < variances["gaussian"]
