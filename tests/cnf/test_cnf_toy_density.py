"""A normflows model of [CNF, normflows layers] learns a 2-D density far better than a Gaussian."""

import math

import normflows as nf
import pytest
import torch

from flowplug.cnf import CNF, MLPODENet


def _ring_of_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    """Eight Gaussians (std 0.2) on a circle of radius 2."""
    angles = torch.randint(0, 8, (n,), generator=generator) * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centres + 0.2 * torch.randn(n, 2, generator=generator)


def _gaussian_fit_log_likelihood(train: torch.Tensor, test: torch.Tensor) -> float:
    mean = train.mean(0)
    covariance = torch.cov(train.T)
    gaussian = torch.distributions.MultivariateNormal(mean, covariance)
    return float(gaussian.log_prob(test).mean())


@pytest.mark.slow
def test_cnf_in_a_normflows_model_beats_a_gaussian_fit():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    train, test = _ring_of_gaussians(4096, generator), _ring_of_gaussians(2048, generator)

    cnf = CNF(MLPODENet(2, hidden_dim=64, num_layers=3, activation="tanh"), divergence="exact",
              train_solver={"method": "rk4", "step_size": 0.125},
              eval_solver={"method": "dopri5", "atol": 1e-5, "rtol": 1e-5})
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), [cnf, nf.flows.ActNorm((2,))])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        batch = train[torch.randint(0, len(train), (256,), generator=generator)]
        loss = model.forward_kld(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        cnf_log_likelihood = float(model.log_prob(test).mean())
    gaussian_log_likelihood = _gaussian_fit_log_likelihood(train, test)
    assert math.isfinite(cnf_log_likelihood)
    assert cnf_log_likelihood > gaussian_log_likelihood + 1.0, (
        cnf_log_likelihood, gaussian_log_likelihood
    )
