"""Conditional flow matching: the analytic optimum for Gaussian data, training, and exact likelihood after it."""

import math

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from flowplug.cnf import CNF, MLPODENet
from flowplug.cnf.flow_matching import straight_path
from flowplug.models.mrcnf import MRCNF

MEAN, SPREAD, SIGMA, T = 1.5, 0.5, 0.05, 2.0


class GaussianOptimalField(nn.Module):
    """E[u | z_s] for data N(MEAN, SPREAD² I) and noise N(0, I), each term scaled by (1 + θ_k)."""

    def __init__(self, theta=(0.0, 0.0)):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def forward(self, t, z, context=None):
        s = (t / T).view(-1, 1)
        b = SIGMA + (1 - SIGMA) * s
        var_z = (1 - s) ** 2 * SPREAD**2 + b**2
        centred = z - (1 - s) * MEAN
        slope = ((1 - SIGMA) * b - (1 - s) * SPREAD**2) / var_z / T
        return (1 + self.theta[0]) * slope * centred + (1 + self.theta[1]) * (-MEAN / T)


def gradient_statistics(theta, batches=24, batch_size=512):
    generator = torch.Generator().manual_seed(0)
    cnf = CNF(GaussianOptimalField(theta), T=T, train_solver={"method": "rk4", "step_size": 0.5})
    grads = []
    for _ in range(batches):
        x = MEAN + SPREAD * torch.randn(batch_size, 2, dtype=torch.float64, generator=generator)
        cnf.zero_grad()
        cnf.flow_matching_loss(x, sigma=SIGMA, generator=generator).mean().backward()
        grads.append(cnf.net.theta.grad.clone())
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / math.sqrt(batches)


def test_analytic_field_is_the_minimiser_for_gaussian_data():
    mean, standard_error = gradient_statistics((0.0, 0.0))
    assert (mean.abs() < 4 * standard_error).all(), (mean, standard_error)
    # the test can fail: away from the optimum the gradient stands far out of the noise
    mean_off, standard_error_off = gradient_statistics((0.3, -0.3))
    assert (mean_off.abs() > 10 * standard_error_off).all(), (mean_off, standard_error_off)


def test_straight_path_ends_and_velocity():
    x, noise = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    start, velocity = straight_path(x, noise, torch.zeros(3, dtype=torch.float64), 0.1, 2.0)
    end, _ = straight_path(x, noise, torch.ones(3, dtype=torch.float64), 0.1, 2.0)
    torch.testing.assert_close(start, x + 0.1 * noise)
    torch.testing.assert_close(end, noise)
    # central difference in t = s·T
    s, h = torch.full((3,), 0.3, dtype=torch.float64), 1e-6
    ahead, _ = straight_path(x, noise, s + h / 4.0, 0.1, 2.0)
    behind, _ = straight_path(x, noise, s - h / 4.0, 0.1, 2.0)
    torch.testing.assert_close((ahead - behind) / h, velocity, atol=1e-8, rtol=0)


def two_moons_like(n, generator):
    angle = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    x = torch.where(upper[:, None], x, torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], 1))
    return x + 0.05 * torch.randn(n, 2, generator=generator)


def test_flow_matching_loss_decreases_and_the_trained_cnf_keeps_exact_likelihood():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    cnf = CNF(
        MLPODENet(2, hidden_dim=32, num_layers=3),
        divergence="exact",
        eval_solver={"method": "dopri5", "atol": 1e-8, "rtol": 1e-8},
    )
    optimizer = torch.optim.Adam(cnf.parameters(), lr=3e-3)

    def held_out_loss():  # the same data, times and noise each time
        fixed = torch.Generator().manual_seed(7)
        with torch.no_grad():
            return cnf.flow_matching_loss(two_moons_like(4096, fixed), generator=fixed).mean().item()

    before = held_out_loss()
    for _ in range(150):
        loss = cnf.flow_matching_loss(two_moons_like(256, generator), generator=generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_out_loss() < 0.9 * before

    # the same net through an independent augmented-ODE solve with the exact trace
    cnf.eval()
    cnf.double()
    x = two_moons_like(16, generator).double()
    with torch.no_grad():
        z, log_det = cnf.inverse(x)

    def augmented(t, state):
        with torch.enable_grad():
            zt = state[:, :2].detach().requires_grad_(True)
            f = cnf.net(t, zt)
            trace = sum(torch.autograd.grad(f[:, i].sum(), zt, retain_graph=True)[0][:, i] for i in range(2))
        return torch.cat([f.detach(), trace.detach()[:, None]], 1)

    state0 = torch.cat([x, torch.zeros(16, 1, dtype=torch.float64)], 1)
    times = torch.tensor([0.0, 1.0], dtype=torch.float64)
    final = odeint(augmented, state0, times, rtol=1e-8, atol=1e-8)[-1]
    torch.testing.assert_close(z, final[:, :2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(log_det, final[:, 2], atol=1e-6, rtol=1e-6)


def test_mrcnf_flow_matching_trains_every_level():
    torch.manual_seed(0)
    solver = {"method": "rk4", "step_size": 0.5}
    model = MRCNF((1, 4, 4), levels=2, hidden_channels=16, num_blocks=1, train_solver=solver, eval_solver=solver)
    data = (torch.rand(128, 1, 1, 1) * 0.5 + 0.25 + 0.05 * torch.randn(128, 1, 4, 4)).clamp(0, 0.99)
    model.initialize_from_data(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    first = [t.item() for t in model.level_flow_matching_losses(data)]
    for _ in range(40):
        loss = model.flow_matching_loss(data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(1)  # the same times and noise as the first evaluation
    last = [t.item() for t in model.level_flow_matching_losses(data)]
    assert all(b < a for a, b in zip(first, last, strict=True)), (first, last)


def test_flow_matching_refuses_levels_that_are_not_one_cnf():
    glow = [{"type": "glow_block", "channels": 1, "hidden_channels": 4, "split_mode": "checkerboard"}]
    solver = {"method": "rk4", "step_size": 0.5}
    model = MRCNF((1, 4, 4), levels=2, level_flows=[None, glow], train_solver=solver)
    with pytest.raises(ValueError, match=r"exactly one CNF, this level holds \['GlowBlock'\]"):
        model.flow_matching_loss(torch.rand(2, 1, 4, 4))
    cnf = model.levels[0].flows[0]
    with pytest.raises(ValueError, match=r"sigma must lie in \[0, 1\)"):
        cnf.flow_matching_loss(torch.rand(2, 3, 2, 2), torch.rand(2, 1, 2, 2), sigma=1.0)
