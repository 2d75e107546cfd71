"""Per-channel standardisation: round trip, exact log-det, data initialisation, state in checkpoints."""

import pytest
import torch

import flowplug
from flowplug.standardize import Standardize


def test_initialize_from_data_gives_zero_mean_unit_std():
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.1, 2.0, 5.0], dtype=torch.float64).view(1, 3, 1, 1)
    x = torch.randn(500, 3, 4, 4, dtype=torch.float64, generator=generator) * scale + 7.0
    layer = Standardize(3).double()
    layer.initialize(x)
    z, _ = layer.inverse(x)
    per_channel = z.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    # eps = 1e-6 added to channel 0's std of 0.1 shrinks its standardised std by about 1e-5
    torch.testing.assert_close(per_channel.std(1), torch.ones(3, dtype=torch.float64), atol=2e-5, rtol=0)


def test_round_trip_and_log_det_match_brute_force_jacobian():
    layer = Standardize(2).double()
    layer.initialize(torch.randn(50, 2, 2, 2, dtype=torch.float64) * 3 + 1)
    x = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    z, log_det = layer.inverse(x)
    back, log_det_back = layer.forward(z)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, -log_det_back, atol=1e-12, rtol=0)
    jacobian = torch.autograd.functional.jacobian(lambda t: layer.inverse(t.view(1, 2, 2, 2))[0].flatten(), x.flatten())
    assert log_det.shape == (1,)
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jacobian)[1], atol=1e-12, rtol=0)


def test_first_training_batch_initialises_once_and_eval_does_not():
    layer = Standardize(1)
    layer.eval()
    layer.inverse(torch.randn(8, 1, 2, 2) + 5)
    assert not bool(layer.initialized)
    layer.train()
    first = torch.randn(64, 1, 2, 2) + 5
    layer.inverse(first)
    assert bool(layer.initialized)
    mean = layer.mean.clone()
    layer.inverse(torch.randn(64, 1, 2, 2) - 5)
    assert torch.equal(layer.mean, mean)


def test_statistics_are_saved_in_the_state_dict():
    layer = Standardize(2)
    layer.initialize(torch.randn(10, 2) * 4)
    fresh = flowplug.build({"type": "standardize", "num_channels": 2})
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized) and torch.equal(fresh.log_std, layer.log_std)


def test_bad_input():
    with pytest.raises(ValueError, match=r"Standardize\(3\) expects \(B, 3, \.\.\.\), got \(2, 4, 5\)"):
        Standardize(3).inverse(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="num_channels must be a positive integer"):
        Standardize(0)
    with pytest.raises(ValueError, match="at least two values per channel"):
        Standardize(1).initialize(torch.zeros(1, 1))
