"""Classifier-free guidance of a CNF (flowplug.cnf.guidance): the guided field's exact maths, pinned on linear
dynamics whose flow and log-determinant are known in closed form, and the errors of a wrong guidance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowplug.cnf import CNF, Guidance, GuidedVelocity


class ContextLinearNet(nn.Module):
    """``f(t, z, c) = (A + c M) z`` for a scalar context ``c`` per sample: linear in ``z`` for each context, so a
    guided field with contexts ``c`` and ``n`` is ``((1 + w)(A + c M) − w (A + n M)) z = (A + (c + w (c − n)) M) z``,
    whose flow is a matrix exponential."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(0.4 * torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        self.m = nn.Parameter(0.4 * torch.randn(dim, dim, generator=generator, dtype=torch.float64))

    def matrix(self, c: torch.Tensor) -> torch.Tensor:
        """``(B, D, D)`` matrices ``A + c M`` of contexts ``c`` of shape ``(B, 1)``."""
        return self.a + c[:, :, None] * self.m

    def forward(self, t, z, context=None):
        return torch.einsum("bij,bj->bi", self.matrix(context), z)


def _guided_cnf(tight) -> tuple[CNF, ContextLinearNet]:
    net = ContextLinearNet(3)
    return CNF(net, T=1.0, divergence="exact", train_solver=tight, eval_solver=tight).eval(), net


def test_guided_velocity_is_the_weighted_difference_of_the_two_fields():
    net = ContextLinearNet(3)
    z = torch.randn(4, 3, dtype=torch.float64)
    c, n = torch.randn(4, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    for w in (0.0, -1.0, 2.5):
        guided = GuidedVelocity(net, Guidance(w, n))(0.3, z, context=c)
        expected = (1 + w) * net(0.3, z, context=c) - w * net(0.3, z, context=n)
        torch.testing.assert_close(guided, expected, atol=1e-14, rtol=0)


def test_guided_velocity_passes_per_sample_times_to_both_halves():
    seen = []

    class Recorder(nn.Module):
        def forward(self, t, z, context=None):
            seen.append(t)
            return z * context

    t = torch.tensor([0.1, 0.7])
    GuidedVelocity(Recorder(), Guidance(1.0, torch.zeros(2, 1)))(t, torch.ones(2, 1), context=torch.ones(2, 1))
    torch.testing.assert_close(seen[0], torch.tensor([0.1, 0.7, 0.1, 0.7]))


@pytest.mark.parametrize("w", [0.0, 1.5, -1.0])
def test_guided_sampling_is_the_flow_of_the_guided_linear_field(tight, w):
    cnf, net = _guided_cnf(tight)
    z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c = torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    n = torch.full((5, 1), 0.7, dtype=torch.float64)
    with torch.no_grad():
        x, log_det = cnf(z, c, guidance=Guidance(w, n))
        # sampling runs T -> 0: x = expm(-T B) z, log|det ∂x/∂z| = -T tr(B), B the guided field's matrix
        b = net.matrix(c + w * (c - n))
        expected = torch.einsum("bij,bj->bi", torch.linalg.matrix_exp(-b), z)
        torch.testing.assert_close(x, expected, atol=1e-9, rtol=0)
        torch.testing.assert_close(log_det, -torch.diagonal(b, dim1=1, dim2=2).sum(1), atol=1e-9, rtol=0)
        back, inverse_log_det = cnf.inverse(x, c, guidance=Guidance(w, n))
    torch.testing.assert_close(back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=1e-9, rtol=0)


def test_guidance_zero_is_the_unguided_solve_bit_for_bit(tight):
    cnf, _ = _guided_cnf(tight)
    z = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 1, dtype=torch.float64)
    with torch.no_grad():
        plain = cnf(z, c)
        guided = cnf(z, c, guidance=Guidance(0.0, torch.randn(4, 1, dtype=torch.float64)))
    assert torch.equal(plain[0], guided[0]) and torch.equal(plain[1], guided[1])


def test_wrong_guidance_is_named(tight):
    cnf, _ = _guided_cnf(tight)
    z = torch.randn(2, 3, dtype=torch.float64)
    c = torch.randn(2, 1, dtype=torch.float64)
    for weight in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="guidance weight must be a finite number"):
            Guidance(weight, c)
    with pytest.raises(TypeError, match="null_context must be a tensor"):
        Guidance(1.0, [0.0])
    with pytest.raises(ValueError, match="this solve has no context"):
        cnf(z, guidance=Guidance(1.0, c))
    with pytest.raises(ValueError, match=r"null context's shape \(3, 1\)"):
        cnf(z, c, guidance=Guidance(1.0, torch.zeros(3, 1, dtype=torch.float64)))
    with pytest.raises((TypeError, ValueError), match="null context"):
        cnf(z, c, guidance=Guidance(1.0, c.float()))
