"""Bits per dimension and dequantisation (DESIGN.md §3)."""

import math

import pytest
import torch

from flowplug.metrics import bits_per_dim, dequantize


def test_uniform_density_on_unit_cube_scores_log2_bins():
    # log p(v) = 0 for the uniform density on [0, 1)^D: exactly log2(n_bins) bits per dimension
    assert bits_per_dim(torch.zeros(3), num_dims=12, n_bins=256).tolist() == [8.0, 8.0, 8.0]
    value = bits_per_dim(torch.tensor([-12 * math.log(2.0)]), num_dims=12, n_bins=2)
    assert value.item() == pytest.approx(2.0)


def test_dequantize_stays_in_the_pixel_bin():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    v = dequantize(x, 256, generator=torch.Generator().manual_seed(0))
    assert v.dtype == torch.float32 and ((v >= 0) & (v < 1)).all()
    assert torch.equal(torch.floor(v * 256).to(torch.uint8), x)


def test_dequantize_never_reaches_one_in_low_precision():
    x = torch.full((1000,), 255, dtype=torch.uint8)
    v = dequantize(x, 256, dtype=torch.bfloat16)
    assert (v < 1).all()


def test_dequantize_rejects_out_of_range_levels():
    with pytest.raises(ValueError, match=r"\[0, 16\] for n_bins=17, got range \[0.0, 17.0\]"):
        dequantize(torch.tensor([0, 17]), 17)


def test_bits_per_dim_argument_errors():
    with pytest.raises(ValueError, match="num_dims must be positive"):
        bits_per_dim(torch.zeros(1), 0, 256)
    with pytest.raises(ValueError, match="n_bins must be at least 2"):
        bits_per_dim(torch.zeros(1), 1, 1)
