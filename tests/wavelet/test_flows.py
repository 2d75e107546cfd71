"""HaarSqueeze / HaarMerge / HaarSplit as normflows components inside normflows' own multi-scale models."""

import normflows as nf
import pytest
import torch

from flowplug import HaarMerge, HaarSplit, HaarSqueeze, haar_decompose


def glow_multiscale(squeeze_factory, channels=2, size=8, levels=2, depth=2, hidden=8):
    """normflows' multi-scale Glow recipe (as in its README), with the squeeze layer swappable."""
    torch.manual_seed(0)
    flows, merges, bases = [], [], []
    for i in range(levels):
        level = [
            nf.flows.GlowBlock(channels * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
            for _ in range(depth)
        ]
        flows.append([*level, squeeze_factory()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (channels * 2 ** (levels - i), size // 2 ** (levels - i), size // 2 ** (levels - i))
        else:
            latent = (channels * 2 ** (levels + 1), size // 2**levels, size // 2**levels)
        bases.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(bases, flows, merges, class_cond=False)


def log_prob(model, x):
    # normflows 1.7.3 MultiscaleFlow.log_prob requires y even when class_cond=False
    return model.log_prob(x, None)


def assert_trains_and_round_trips(model, data):
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = -log_prob(model, data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses
    with torch.no_grad():
        samples, log_q = model.sample(4, temperature=0.7)
        assert samples.shape == (4, *data.shape[1:]) and torch.isfinite(log_q).all()
        z, log_det = model.inverse_and_log_det(data[:4])
        x, log_det_back = model.forward_and_log_det(z)
        torch.testing.assert_close(x, data[:4], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(log_det, -log_det_back, atol=1e-3, rtol=1e-4)


def test_haar_squeeze_has_squeeze_shapes_in_both_directions():
    z = torch.randn(3, 8, 2, 4)
    assert HaarSqueeze()(z)[0].shape == nf.flows.Squeeze()(z)[0].shape
    x = torch.randn(3, 2, 4, 8)
    assert HaarSqueeze().inverse(x)[0].shape == nf.flows.Squeeze().inverse(x)[0].shape


def test_haar_squeeze_channel_layout_is_coarse_then_bands():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    squeezed, _ = HaarSqueeze().inverse(x)
    coarse, details = haar_decompose(x)
    assert torch.equal(squeezed[:, :3], coarse) and torch.equal(squeezed[:, 3:], details)


@pytest.mark.parametrize("flow", [HaarSqueeze(), HaarMerge(), HaarSplit()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_det_is_zero_tensor_of_batch_shape_and_dtype(flow, dtype):
    x = torch.randn(5, 4, 4, 4, dtype=dtype)
    direction = flow.inverse if isinstance(flow, (HaarSqueeze, HaarMerge)) else flow.forward
    out, log_det = direction(x)
    assert isinstance(log_det, torch.Tensor) and log_det.shape == (5,) and log_det.dtype == dtype
    assert torch.equal(log_det, torch.zeros(5, dtype=dtype))
    back = flow.forward(out)[0] if direction == flow.inverse else flow.inverse(out)[0]
    torch.testing.assert_close(back, x)


def test_haar_squeeze_replaces_every_squeeze_in_normflows_glow():
    model = glow_multiscale(HaarSqueeze)
    assert not any(type(m) is nf.flows.Squeeze for m in model.modules())
    data = torch.rand(16, 2, 8, 8)
    assert_trains_and_round_trips(model, data)


def test_multiscale_flow_with_haar_merges():
    """Coarse latent (C, 2, 2) at the base, detail latents (3C, h, w) merged in by HaarMerge at each scale."""
    torch.manual_seed(0)
    channels, size = 2, 8
    bases = [nf.distributions.DiagGaussian((channels, 2, 2))]
    flows = [[nf.flows.ActNorm((channels, 1, 1))]]
    merges = []
    for h in (2, 4):  # details at 2×2 and 4×4 merge into 4×4 and 8×8 images
        bases.append(nf.distributions.DiagGaussian((3 * channels, h, h)))
        merges.append(HaarMerge())
        flows.append([nf.flows.GlowBlock(channels, 8, split_mode="checkerboard") for _ in range(2)])
    model = nf.MultiscaleFlow(bases, flows, merges, class_cond=False)
    data = torch.rand(16, channels, size, size)
    assert_trains_and_round_trips(model, data)
