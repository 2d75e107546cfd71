"""The edge-bin warp: exact, bin-preserving, smooth at the bin edges; and the models' ``bin_warp`` option."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowplug
from flowplug.bin_warp import EdgeBinWarp
from flowplug.testing import tensors

_RK4 = {"method": "rk4", "step_size": 0.5}


def _edge_heavy_images(n_bins: int, generator: torch.Generator) -> torch.Tensor:
    """Dequantised 4x4 images whose pixels are mostly in the lowest or highest of ``n_bins`` bins."""
    bins = torch.randint(0, n_bins, (3, 1, 4, 4), generator=generator)
    bins[:, :, :2] = 0
    bins[:, :, 3] = n_bins - 1
    return ((bins + torch.rand(bins.shape, generator=generator)) / n_bins).double()


@settings(deadline=None, max_examples=40)
@given(n_bins=st.sampled_from([2, 3, 17, 256]), power=st.floats(0.1, 0.9), seed=st.integers(0, 2**31 - 1))
def test_round_trip_and_log_det_against_the_autograd_jacobian(n_bins, power, seed):
    warp = EdgeBinWarp(n_bins, power)
    v = _edge_heavy_images(n_bins, torch.Generator().manual_seed(seed))
    z, log_det = warp.inverse(v)
    back, log_det_back = warp.forward(z)
    torch.testing.assert_close(back, v, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros_like(log_det), atol=1e-9, rtol=0)
    for i in range(v.shape[0]):
        jacobian = torch.autograd.functional.jacobian(lambda x: warp.inverse(x.view(1, 1, 4, 4))[0].flatten(),
                                                      v[i].flatten())
        assert torch.logdet(jacobian).item() == pytest.approx(log_det[i].item(), abs=1e-8)


@given(v=tensors((2, 3, 4, 4), low=0.0, high=1.0), n_bins=st.integers(2, 300))
def test_every_pixel_stays_in_its_bin_and_middle_bins_are_untouched(v, n_bins):
    z, _ = EdgeBinWarp(n_bins).inverse(v)
    assert torch.equal((v * n_bins).floor().clamp(max=n_bins - 1), (z * n_bins).floor().clamp(max=n_bins - 1))
    middle = (v * n_bins >= 1) & (v * n_bins < n_bins - 1)
    assert torch.equal(z[middle], v[middle])
    assert torch.isfinite(z).all() and ((z >= 0) & (z <= 1)).all()


def test_uniform_noise_of_an_edge_bin_becomes_a_bump_vanishing_at_both_edges():
    power, n_bins = 1 / 3, 256
    warp = EdgeBinWarp(n_bins, power)
    u = torch.rand(200_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for offset in (0, n_bins - 1):  # the black and the saturated bin
        w = (offset + u) / n_bins
        position = warp.inverse(w)[0] * n_bins - offset  # in [0, 1)
        near_edges = ((position < 0.05) | (position > 0.95)).double().mean().item()
        # the warped positions' CDF is sigmoid(logit(w') / a): 2 * sigmoid(3 * logit(0.05)) ~ 2.8e-4 of the mass
        # lies within 0.05 of an edge, against 0.1 before the warp
        assert near_edges == pytest.approx(2 * torch.sigmoid(torch.tensor(math.log(0.05 / 0.95) / power)).item(),
                                           abs=2e-4)
        # the density falls towards each edge: less mass in [0, 0.1) than in [0.1, 0.2), and likewise at the top
        assert ((position < 0.1).sum() < ((position >= 0.1) & (position < 0.2)).sum()
                and (position >= 0.9).sum() < ((position >= 0.8) & (position < 0.9)).sum())


def test_exact_zeros_and_ones_give_finite_values_and_round_trip():
    warp = EdgeBinWarp(256, 0.5)
    for dtype in (torch.float32, torch.float64):
        v = torch.tensor([[0.0, 1.0, 0.5]], dtype=dtype)
        z, log_det = warp.inverse(v)
        back, _ = warp.forward(z)
        assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
        torch.testing.assert_close(back, v, atol=1e-6, rtol=0)


def test_float32_round_trip():
    warp = EdgeBinWarp(256, 1 / 3)
    v = _edge_heavy_images(256, torch.Generator().manual_seed(1)).float()
    back, _ = warp.forward(warp.inverse(v)[0])
    torch.testing.assert_close(back, v, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_bins": 1}, "n_bins must be an integer of at least 2"),
    ({"n_bins": 256.0}, "n_bins must be an integer"),
    ({"n_bins": True}, "n_bins must be an integer"),
    ({"power": 1.0}, r"power must lie in \(0, 1\)"),
    ({"power": 0.0}, r"power must lie in \(0, 1\)"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EdgeBinWarp(**kwargs)


def test_values_outside_the_unit_interval_pass_unchanged_and_dtypes_are_checked():
    warp = EdgeBinWarp()
    outside = torch.tensor([[-0.5, -1e-9, 1 + 1e-9, 3.0]], dtype=torch.float64)
    for direction in (warp.inverse, warp.forward):
        out, log_det = direction(outside)
        assert torch.equal(out, outside) and log_det.item() == 0
    with pytest.raises(TypeError, match="EdgeBinWarp input"):
        warp.inverse(torch.tensor([[1]]))


def _tiny_mrcnf(**options):
    return flowplug.build({"type": "mrcnf", "image_shape": [1, 4, 4], "levels": 2, "hidden_channels": 4,
                           "num_blocks": 1, "divergence": "exact", "train_solver": _RK4, "eval_solver": _RK4,
                           **options}).double()


def test_mrcnf_bin_warp_counts_its_log_det_in_the_finest_level_and_rebuilds():
    warp = {"n_bins": 17, "power": 0.5}
    model, plain = _tiny_mrcnf(bin_warp=warp), _tiny_mrcnf()
    plain.load_state_dict(model.state_dict())
    v = _edge_heavy_images(17, torch.Generator().manual_seed(2))
    model.initialize_from_data(v)
    plain.load_state_dict(model.state_dict())
    warped, warp_log_det = EdgeBinWarp(**warp).inverse(v)
    terms, plain_terms = model.level_log_probs(v), plain.level_log_probs(warped)
    torch.testing.assert_close(terms[0], plain_terms[0] + warp_log_det, atol=1e-10, rtol=0)
    torch.testing.assert_close(terms[1], plain_terms[1], atol=1e-10, rtol=0)
    torch.testing.assert_close(model.log_prob(v), sum(terms), atol=1e-10, rtol=0)
    rebuilt = flowplug.build(model.config)
    assert rebuilt.config["bin_warp"] == warp and rebuilt.bin_warp.n_bins == 17
    assert "bin_warp" not in plain.config  # configs without the option stay as older versions wrote them


def test_mrcnf_bin_warp_latents_round_trip_and_samples_carry_their_density():
    model, plain = _tiny_mrcnf(bin_warp={"n_bins": 17}), _tiny_mrcnf()
    v = _edge_heavy_images(17, torch.Generator().manual_seed(3))
    model.initialize_from_data(v)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        latents, log_det = model.inverse_and_log_det(v)
        back, log_det_back = model.forward_and_log_det(latents)
        torch.testing.assert_close(back, v, atol=1e-6, rtol=0)
        torch.testing.assert_close(log_det + log_det_back, torch.zeros_like(log_det), atol=1e-5, rtol=0)
        torch.manual_seed(0)
        samples, log_q = model.sample(4)
        torch.manual_seed(0)
        plain_samples, plain_log_q = plain.sample(4)
        # the same draws, un-warped: log q(v) = log q(x) + log|dx/dv| with x the warp of v
        warped, warp_log_det = model.bin_warp.inverse(samples)
        torch.testing.assert_close(warped, plain_samples, atol=1e-12, rtol=0)
        torch.testing.assert_close(log_q, plain_log_q + warp_log_det, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_baselines_take_the_bin_warp_with_its_exact_log_det(name):
    torch.manual_seed(0)
    model = flowplug.build({"type": name, "image_shape": [1, 4, 4], "levels": 1, "depth": 1,
                            "hidden_channels": 4, "bin_warp": {"n_bins": 17, "power": 0.5}}).double()
    plain = flowplug.build({**model.config, "bin_warp": None}).double()
    assert "bin_warp" not in plain.config  # as older versions wrote it: their checkpoints still resume
    v = _edge_heavy_images(17, torch.Generator().manual_seed(4))
    model.log_prob(v)  # ActNorm's data-dependent initialisation
    plain.load_state_dict(model.state_dict())
    warped, warp_log_det = EdgeBinWarp(17, 0.5).inverse(v)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(v), plain.log_prob(warped) + warp_log_det, atol=1e-10, rtol=0)
        latents, log_det = model.inverse_and_log_det(v)
        back, log_det_back = model.forward_and_log_det(latents)
        torch.testing.assert_close(back, v, atol=1e-10, rtol=0)
        torch.testing.assert_close(log_det + log_det_back, torch.zeros_like(log_det), atol=1e-8, rtol=0)
        samples, log_q = model.sample(3)
        torch.testing.assert_close(log_q, model.log_prob(samples), atol=1e-8, rtol=1e-8)
