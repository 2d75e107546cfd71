"""Bits per dimension and dequantisation (docs/design.md §3)."""

import math

import pytest
import torch

from flowplug.metrics import bits_per_dim, level_bits_per_dim


def test_uniform_density_on_unit_cube_scores_log2_bins():
    # log p(v) = 0 for the uniform density on [0, 1)^D: exactly log2(n_bins) bits per dimension
    assert bits_per_dim(torch.zeros(3), num_dims=12, n_bins=256).tolist() == [8.0, 8.0, 8.0]
    value = bits_per_dim(torch.tensor([-12 * math.log(2.0)]), num_dims=12, n_bins=2)
    assert value.item() == pytest.approx(2.0)


def test_bits_per_dim_argument_errors():
    with pytest.raises(ValueError, match="num_dims must be positive"):
        bits_per_dim(torch.zeros(1), 0, 256)
    with pytest.raises(ValueError, match="n_bins must be at least 2"):
        bits_per_dim(torch.zeros(1), 1, 1)



def test_per_level_shares_sum_to_the_overall_bits_per_dim():
    levels = [torch.tensor([-3.0, -1.0]), torch.tensor([-5.0, 2.0])]
    shares = level_bits_per_dim(levels, num_dims=4)
    torch.testing.assert_close(sum(shares) + math.log2(16), bits_per_dim(levels, 4, 16))
    torch.testing.assert_close(bits_per_dim(levels, 4, 16), bits_per_dim(levels[0] + levels[1], 4, 16))
