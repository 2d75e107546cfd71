"""RNODE's kinetic-energy and Jacobian-norm terms: values, gradients, and when they are recorded."""

import pytest
import torch
from scipy.integrate import quad

from flowplug.cnf import CNF, MLPODENet
from flowplug.losses import collect_extra_losses

RK4 = {"method": "rk4", "step_size": 0.125}


def _cnf(net):
    return CNF(net, divergence="exact", train_solver=RK4, kinetic_energy=2.0, jacobian_norm=3.0)


def test_zero_for_the_zero_initialised_net():
    cnf = _cnf(MLPODENet(2, hidden_dim=8))
    cnf.inverse(torch.randn(4, 2))
    terms = cnf.extra_loss_terms()
    assert set(terms) == {"kinetic_energy", "jacobian_norm"}
    assert all(value.item() == 0.0 for value in terms.values())


def test_positive_after_a_perturbation(perturb):
    cnf = _cnf(perturb(MLPODENet(2, hidden_dim=8)))
    cnf.inverse(torch.randn(4, 2))
    assert all(value.item() > 0 for value in cnf.extra_loss_terms().values())


def test_values_for_linear_dynamics(linear_net, tight):
    """``f = A z``: kinetic ``∫‖A expm(tA) x‖² dt / D``, Jacobian ``T ‖A‖²_F / D`` exactly."""
    net = linear_net(3)
    cnf = CNF(net, T=0.8, divergence="exact", train_solver=tight, kinetic_energy=1.0,
              jacobian_norm=1.0)
    x = torch.randn(1, 3, dtype=torch.float64)
    cnf.inverse(x)
    terms = cnf.extra_loss_terms()

    matrix = net.matrix.detach()

    def speed(t):
        return float((matrix @ torch.linalg.matrix_exp(t * matrix) @ x[0]).square().sum()) / 3

    kinetic, _ = quad(speed, 0.0, 0.8, epsabs=1e-12)
    assert terms["kinetic_energy"].item() == pytest.approx(kinetic, rel=1e-8)
    jacobian = 0.8 * float(matrix.square().sum()) / 3
    assert terms["jacobian_norm"].item() == pytest.approx(jacobian, rel=1e-10)


def test_gradients_match_finite_differences(perturb):
    torch.manual_seed(0)
    net = perturb(MLPODENet(2, hidden_dim=8).double(), std=0.5)
    cnf = _cnf(net)
    x = torch.randn(4, 2, dtype=torch.float64)
    params = list(net.parameters())
    direction = [torch.randn_like(p) for p in params]

    def penalty():
        cnf.inverse(x)
        return sum(cnf.extra_loss_terms().values())

    grads = torch.autograd.grad(penalty(), params)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
    step = 1e-5
    values = []
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * step * d)
            values.append(penalty().item())
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * step * d)
    numeric = (values[0] - values[1]) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_hutchinson_jacobian_term_is_unbiased(perturb):
    torch.manual_seed(0)
    net = perturb(MLPODENet(2, hidden_dim=8).double(), std=0.5)
    x = torch.randn(1, 2, dtype=torch.float64).expand(200, 2)  # one probe per row
    exact = CNF(net, divergence="exact", train_solver=RK4, jacobian_norm=1.0)
    exact.inverse(x)
    estimate = CNF(net, train_solver=RK4, jacobian_norm=1.0)
    estimates = []
    for _ in range(20):
        estimate.inverse(x)
        estimates.append(estimate.extra_loss_terms()["jacobian_norm"].item())
    estimates = torch.tensor(estimates, dtype=torch.float64)
    standard_error = float(estimates.std()) / len(estimates) ** 0.5
    expected = exact.extra_loss_terms()["jacobian_norm"].item()
    assert abs(float(estimates.mean()) - expected) < 4 * standard_error


def test_only_nonzero_terms_only_in_training_density_passes(perturb):
    net = perturb(MLPODENet(2, hidden_dim=8))
    x = torch.randn(4, 2)
    assert CNF(net, train_solver=RK4).extra_loss_terms() == {}

    only_kinetic = CNF(net, train_solver=RK4, kinetic_energy=1.0)
    only_kinetic.inverse(x)
    assert set(only_kinetic.extra_loss_terms()) == {"kinetic_energy"}

    only_kinetic.forward(x)  # sampling passes leave the terms of the last density pass alone
    assert set(only_kinetic.extra_loss_terms()) == {"kinetic_energy"}
    only_kinetic.eval()
    only_kinetic.inverse(x)
    assert only_kinetic.extra_loss_terms() == {}


def test_terms_are_collected_for_the_trainer(perturb):
    model = torch.nn.ModuleDict({"level0": _cnf(perturb(MLPODENet(2, hidden_dim=8)))})
    model["level0"].inverse(torch.randn(4, 2))
    assert set(collect_extra_losses(model)) == {"level0.kinetic_energy", "level0.jacobian_norm"}


def test_coefficients_are_validated():
    with pytest.raises(ValueError, match="kinetic_energy must be a number >= 0, got -1"):
        CNF(MLPODENet(2), kinetic_energy=-1)
