"""Each assertion passes on a correct flow and fails, with a useful message, on a planted bug."""

import normflows as nf
import pytest
import torch
from normflows.flows import Flow

import flowplug
from flowplug.testing import (
    assert_batch_independent,
    assert_invertible,
    assert_log_det_correct,
    assert_sample_log_prob_consistent,
    perturb_parameters,
)

D64 = torch.float64


class Scale(Flow):
    """Elementwise z -> z * exp(s) + t on vectors; ``bug`` plants one mistake."""

    def __init__(self, dim=3, bug=None):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.s = torch.nn.Parameter(torch.randn(dim, generator=generator, dtype=D64))
        self.t = torch.nn.Parameter(torch.randn(dim, generator=generator, dtype=D64))
        self.bug = bug

    def forward(self, z):
        log_det = self.s.sum().expand(z.shape[0])
        if self.bug == "sign":
            log_det = -log_det
        if self.bug == "missing_term":
            log_det = self.s[1:].sum().expand(z.shape[0])
        out = z * self.s.exp() + self.t
        if self.bug == "dtype":
            out = out.float()
        return out, log_det

    def inverse(self, x):
        log_det = -self.s.sum().expand(x.shape[0])
        if self.bug in ("sign", "one_sided_sign"):
            log_det = -log_det
        if self.bug == "missing_term":
            log_det = -self.s[1:].sum().expand(x.shape[0])
        z = (x - self.t) * (-self.s).exp()
        if self.bug == "shift":
            z = z + 1e-4
        if self.bug == "batch_mean":
            z = z - z.mean(0, keepdim=True)
        if self.bug == "python_zero":
            return z, 0
        return z, log_det


class Hutchinson(Flow):
    """z -> exp(A) z with log-det tr(A) estimated as e^T A e (Gaussian e, unbiased); ``bias`` is added."""

    def __init__(self, dim=3, bias=0.0):
        super().__init__()
        generator = torch.Generator().manual_seed(2)
        self.a = torch.nn.Parameter(0.3 * torch.randn(dim, dim, generator=generator, dtype=D64))
        self.bias = bias

    def _estimate(self, batch):
        probe = torch.randn(batch, self.a.shape[0], dtype=self.a.dtype)
        return torch.einsum("bi,ij,bj->b", probe, self.a, probe) + self.bias

    def forward(self, z):
        return z @ torch.linalg.matrix_exp(self.a).T, self._estimate(z.shape[0])

    def inverse(self, x):
        return x @ torch.linalg.matrix_exp(-self.a).T, -self._estimate(x.shape[0])


def _x(batch=4, dim=3):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(0), dtype=D64)


def test_correct_flow_passes_every_assertion():
    flow = Scale()
    assert_invertible(flow, _x(), strict_log_det=True)
    assert_log_det_correct(flow, _x(), strict_log_det=True)
    assert_batch_independent(flow, _x())


def test_wrong_log_det_sign_is_caught_by_the_jacobian_check_only():
    flow = Scale(bug="sign")
    assert_invertible(flow, _x())  # both directions wrong: the log-dets still cancel
    with pytest.raises(
        AssertionError, match=r"flow.inverse log_det vs log\|det J\|.*worst at sample"
    ):
        assert_log_det_correct(flow, _x())


def test_one_sided_wrong_sign_is_caught_by_invertibility():
    with pytest.raises(AssertionError, match="log-dets do not cancel"):
        assert_invertible(Scale(bug="one_sided_sign"), _x())


def test_inverse_off_by_a_small_shift_is_caught():
    with pytest.raises(
        AssertionError, match=r"forward\(inverse\(input\)\) vs input: 12 of 12 .*abs error 0\.0001"
    ):
        assert_invertible(Scale(bug="shift"), _x())


def test_flow_that_changes_dtype_is_caught():
    with pytest.raises(AssertionError, match="changed dtype or device"):
        assert_invertible(Scale(bug="dtype"), _x())
    with pytest.raises(AssertionError, match="changed dtype or device"):
        assert_log_det_correct(Scale(bug="dtype"), _x())


def test_log_det_missing_a_term_is_caught():
    flow = Scale(bug="missing_term")
    assert_invertible(flow, _x())  # consistent in both directions
    with pytest.raises(AssertionError, match=r"log\|det J\|.*abs error"):
        assert_log_det_correct(flow, _x())


def test_failure_message_names_the_worst_sample():
    class OneBadSample(Scale):
        def inverse(self, x):
            z, log_det = super().inverse(x)
            return z, log_det + torch.tensor([0.0, 0.5, 0.0, 0.0], dtype=D64)

    with pytest.raises(
        AssertionError, match=r"1 of 4 element\(s\).*worst at sample 1: got .* \(abs error 0\.5,"
    ):
        assert_log_det_correct(OneBadSample(), _x(), direction="inverse")


def test_in_place_modification_of_the_input_is_caught():
    with pytest.raises(AssertionError, match=r"Shift\.inverse modified its input in place"):
        assert_invertible(flowplug.build({"type": "shift"}), _x())


def test_python_zero_log_det_is_accepted_unless_strict():
    flow = flowplug.build("squeeze").double()
    x = torch.randn(2, 1, 4, 4, dtype=D64)
    assert_invertible(flow, x)
    with pytest.raises(AssertionError, match="log_det is the Python int 0"):
        assert_invertible(flow, x, strict_log_det=True)


def test_scalar_tensor_log_det_breaks_the_strict_contract():
    flow = perturb_parameters(flowplug.build({"type": "act_norm", "shape": (2, 1, 1)}).double())
    x = torch.randn(3, 2, 4, 4, dtype=D64)
    assert_log_det_correct(flow, x)
    with pytest.raises(AssertionError, match=r"shape \(\) instead of \(3,\)"):
        assert_log_det_correct(flow, x, strict_log_det=True)


def test_batch_statistics_are_caught():
    with pytest.raises(AssertionError, match="each sample alone vs within the batch"):
        assert_batch_independent(Scale(bug="batch_mean"), _x())


def test_stochastic_estimator_unbiased_passes_and_biased_fails():
    torch.manual_seed(0)
    assert_log_det_correct(Hutchinson(), _x(), stochastic=True, num_draws=200)
    with pytest.raises(AssertionError, match=r"biased .*standard errors"):
        assert_log_det_correct(Hutchinson(bias=0.5), _x(), stochastic=True, num_draws=200)
    with pytest.raises(AssertionError, match=r"log\|det J\|"):  # one draw is not the exact value
        assert_log_det_correct(Hutchinson(), _x())


def _tiny_glow(levels=2, image=(1, 4, 4)):
    """A normflows Glow MultiscaleFlow on 1x4x4 images: one Glow block per level, perturbed, float64."""
    torch.manual_seed(0)
    channels, size = image[0], image[1]
    q0, flows, merges = [], [], []
    for i in range(levels):
        width = channels * 2 ** (levels + 1 - i)
        flows.append(
            [nf.flows.GlowBlock(width, 8, split_mode="channel", scale=True), nf.flows.Squeeze()]
        )
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (
                channels * 2 ** (levels - i),
                size // 2 ** (levels - i),
                size // 2 ** (levels - i),
            )
        else:
            latent = (channels * 2 ** (levels + 1), size // 2**levels, size // 2**levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return perturb_parameters(nf.MultiscaleFlow(q0, flows, merges).double())


def test_sample_log_prob_consistent_on_normflows_multiscale_glow():
    assert_sample_log_prob_consistent(_tiny_glow(), num_samples=4)


def test_sample_log_prob_inconsistency_is_caught():
    base = nf.distributions.DiagGaussian(3)
    model = nf.NormalizingFlow(base, [Scale(bug="one_sided_sign")]).double()
    with pytest.raises(
        AssertionError, match=r"log_prob\(samples\) vs the log_q returned by sample"
    ):
        assert_sample_log_prob_consistent(model, num_samples=4)
    assert_sample_log_prob_consistent(nf.NormalizingFlow(base, [Scale()]).double(), num_samples=4)


def test_too_large_input_for_brute_force_jacobian_is_refused():
    with pytest.raises(ValueError, match="max_dims=8"):
        assert_log_det_correct(Scale(dim=9), _x(dim=9), max_dims=8)
