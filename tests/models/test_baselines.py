"""Glow and RealNVP baselines: exact inverses, consistent densities, spec rebuilds, the normflows
workaround."""

from __future__ import annotations

import math

import normflows as nf
import pytest
import torch

import flowplug
from flowplug._normflows_components import SoftClampedScales
from flowplug.models.baselines import Glow, RealNVP

SHAPE = (2, 4, 4)
TINY = {"image_shape": list(SHAPE), "levels": 2, "depth": 2, "hidden_channels": 8}


def _model(cls, seed=0, **overrides):
    torch.manual_seed(seed)
    model = cls(**{**TINY, **overrides}).double()
    # Warm ActNorm's data-dependent initialisation and move couplings off their zero start.
    model.log_prob(
        torch.rand(8, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(params=[(Glow, {}), (RealNVP, {}), (RealNVP, {"scale_map": "sigmoid"}),
                        (RealNVP, {"scale_clamp": 0.5})],
                ids=["glow", "realnvp", "realnvp-sigmoid-scales", "realnvp-clamped-scales"])
def model(request):
    cls, options = request.param
    return _model(cls, **options)


def test_round_trip_and_log_det_are_exact(model):
    v = torch.rand(5, *SHAPE, dtype=torch.float64) * 0.98 + 0.01
    z, log_det = model.inverse_and_log_det(v)
    back, log_det_back = model.forward_and_log_det(z)
    torch.testing.assert_close(back, v, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        log_det + log_det_back, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-10
    )


def test_log_det_matches_autograd_jacobian(model):
    v = torch.rand(1, *SHAPE, dtype=torch.float64) * 0.9 + 0.05

    def flat(u):
        z, _ = model.inverse_and_log_det(u.view(1, *SHAPE))
        return torch.cat([t.reshape(-1) for t in z])

    jac = torch.autograd.functional.jacobian(flat, v.reshape(-1))
    _, log_det = model.inverse_and_log_det(v)
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jac).logabsdet, rtol=0, atol=1e-9)


def test_sample_log_q_is_log_prob_of_samples(model):
    torch.manual_seed(1)
    v, log_q = model.sample(6, temperature=None)
    assert v.shape == (6, *SHAPE) and log_q.shape == (6,)
    torch.testing.assert_close(log_q, model.log_prob(v), rtol=1e-9, atol=1e-8)


def test_temperature_scales_the_latents(model):
    torch.manual_seed(2)
    cold, _ = model.sample(64, temperature=0.1)
    torch.manual_seed(2)
    warm, _ = model.sample(64, temperature=1.0)
    assert cold.std() < warm.std()


@pytest.mark.parametrize("cls", [Glow, RealNVP])
def test_spec_rebuild_gives_identical_log_prob(cls):
    v = torch.rand(4, *SHAPE, dtype=torch.float64)
    torch.manual_seed(3)
    original = cls(**TINY).double()
    torch.manual_seed(3)
    rebuilt = flowplug.build(original.config).double()
    assert isinstance(rebuilt, cls) and rebuilt.config == original.config
    torch.testing.assert_close(rebuilt.log_prob(v), original.log_prob(v), rtol=0, atol=0)


def test_registered_as_models():
    assert {"glow", "realnvp"} <= set(flowplug.components("model"))
    assert flowplug.get_component("glow").factory is Glow


def test_log_prob_is_that_of_a_logit_then_gaussian_at_identity_start():
    """Freshly built (zero-initialised couplings, ActNorm initialised to identity), log p is Logit
    + N(0, 1)."""
    model = RealNVP(**TINY).double()
    v = torch.rand(3, *SHAPE, dtype=torch.float64) * 0.9 + 0.05
    alpha = 0.05
    u = alpha + (1 - 2 * alpha) * v
    y = torch.log(u) - torch.log1p(-u)
    dims = math.prod(SHAPE)
    expected = (-0.5 * y.pow(2) - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    expected = expected + dims * math.log(1 - 2 * alpha) - torch.log(u * (1 - u)).sum((1, 2, 3))
    torch.testing.assert_close(model.log_prob(v), expected, rtol=0, atol=1e-10)


def test_normflows_log_prob_workaround_is_needed_and_works():
    """normflows 1.7.3's MultiscaleFlow.log_prob needs y; ours does not. If normflows fixes it,
    this says so."""
    model = Glow(**TINY).double()
    v = torch.rand(3, *SHAPE, dtype=torch.float64)
    z, log_det = model.flow.inverse_and_log_det(v)
    by_parts = log_det + sum(q0.log_prob(zi) for q0, zi in zip(model.flow.q0, z, strict=True))
    torch.testing.assert_close(model.flow.log_prob(v), by_parts, rtol=0, atol=1e-10)
    if nf.__version__ == "1.7.3":
        with pytest.raises(TypeError):
            nf.MultiscaleFlow.log_prob(model.flow, v)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_shape": [2, 6, 6]}, ValueError, "divisible by 4"),
        ({"image_shape": [2, 4]}, ValueError, "image_shape"),
        ({"levels": 0}, ValueError, "levels"),
        ({"depth": 0}, ValueError, "depth"),
        ({"hidden_channels": 0}, ValueError, "hidden_channels must be a positive integer, got 0"),
        ({"hidden_channels": 2.5}, ValueError, "hidden_channels must be a positive integer, got 2.5"),
        ({"levels": True}, ValueError, "levels must be a positive integer, got True"),
        ({"alpha": 0.5}, ValueError, "alpha"),
    ],
)
@pytest.mark.parametrize("cls", [Glow, RealNVP])
def test_bad_construction_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**{**TINY, **kwargs})


@pytest.mark.parametrize("cls", [Glow, RealNVP])
def test_refuses_a_scale_map_normflows_would_only_fail_on_when_run(cls):
    with pytest.raises(ValueError, match=r"scale_map must be one of \('sigmoid', 'exp', 'sigmoid_inv'\), got 'Exp'"):
        cls(**TINY, scale_map="Exp")


@pytest.mark.parametrize("cls", [Glow, RealNVP])
def test_bad_inputs(cls):
    model = cls(**TINY)
    with pytest.raises(ValueError, match=r"\(B, 2, 4, 4\)"):
        model.log_prob(torch.rand(3, 1, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        model.log_prob(torch.zeros(3, *SHAPE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=0.0)


@pytest.mark.parametrize("cls", [flowplug.Glow, flowplug.RealNVP])
def test_config_records_every_constructor_argument(cls):
    import inspect

    parameters = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    extra = {"scale_clamp": 2.0} if cls is flowplug.RealNVP else {}
    model = cls((1, 8, 8), levels=1, depth=1, hidden_channels=4, bin_warp={"n_bins": 17}, num_classes=2,
                scale_map="sigmoid", **extra)
    assert list(model.config) == ["type", *parameters]
    assert model.config["image_shape"] == [1, 8, 8] and model.config["depth"] == 1
    assert flowplug.build(model.config).config == model.config
    # without a warp the key is left out, so configs (and checkpoints) of older versions match; likewise
    # RealNVP's default exponential scales
    optional = {"bin_warp", "num_classes"} | ({"scale_map", "scale_clamp"} if cls is flowplug.RealNVP else set())
    assert not optional & set(cls((1, 8, 8), levels=1, depth=1, hidden_channels=4).config)


def test_realnvp_scale_map_reaches_every_coupling():
    model = RealNVP(**TINY, scale_map="sigmoid")
    couplings = [m for m in model.modules() if isinstance(m, nf.flows.AffineCoupling)]
    assert len(couplings) == 2 * TINY["levels"] * TINY["depth"]
    assert {c.scale_map for c in couplings} == {"sigmoid"}
    assert {c.scale_map for c in RealNVP(**TINY).modules() if isinstance(c, nf.flows.AffineCoupling)} == {"exp"}


def test_realnvp_scale_clamp_bounds_every_couplings_scales_softly():
    clamp = 0.5
    model = RealNVP(**TINY, scale_clamp=clamp).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 3.0)  # raw log-scales far beyond the clamp
    couplings = [m for m in model.modules() if isinstance(m, nf.flows.AffineCoupling)]
    assert len(couplings) == 2 * TINY["levels"] * TINY["depth"]
    for coupling in couplings:
        half = torch.randn(4, coupling.param_map.net.net[0].in_channels, 4, 4, dtype=torch.float64)
        out, raw = coupling.param_map(half), coupling.param_map.net(half)
        assert out[:, 1::2].abs().max() <= clamp < raw[:, 1::2].abs().max()
    x = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    shift_scale = torch.tensor([[[[0.3]], [[0.01]], [[-0.2]], [[5.0]]]], dtype=torch.float64).expand(1, 4, 2, 2)
    clamped = SoftClampedScales(lambda _: shift_scale, clamp)(x)
    expected = torch.tensor([0.3, clamp * math.tanh(0.01 / clamp), -0.2, clamp * math.tanh(5.0 / clamp)],
                            dtype=torch.float64).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    torch.testing.assert_close(clamped, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("clamp", [0, -1.0, math.inf, math.nan])
def test_realnvp_refuses_a_scale_clamp_that_is_not_positive_and_finite(clamp):
    with pytest.raises(ValueError, match=f"scale_clamp must be positive and finite, got {clamp}"):
        RealNVP(**TINY, scale_clamp=clamp)
