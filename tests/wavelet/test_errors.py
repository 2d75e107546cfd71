"""Bad input to the transform gets an error naming the offending shape or dtype."""

import pytest
import torch

from flowplug import HaarMerge, HaarSqueeze, haar_decompose, haar_pyramid, haar_reconstruct


def test_wrong_ndim_is_named():
    with pytest.raises(ValueError, match=r"4-d image batch .* got shape \(3, 4, 4\)"):
        haar_decompose(torch.zeros(3, 4, 4))


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (1, 1, 4, 5)])
def test_odd_size_is_named(shape):
    with pytest.raises(ValueError, match=rf"even, got H={shape[2]}, W={shape[3]}"):
        haar_decompose(torch.zeros(shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_and_bool_dtypes_are_refused(dtype):
    with pytest.raises(TypeError, match=rf"floating-point dtype .* got {dtype}"):
        haar_decompose(torch.zeros(1, 1, 2, 2, dtype=dtype))


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor, got list"):
        haar_decompose([[1.0]])


def test_mismatched_coarse_and_details():
    with pytest.raises(ValueError, match=r"\(B, 3C, h, w\) = \(2, 6, 2, 2\) .* got \(2, 3, 2, 2\)"):
        haar_reconstruct(torch.zeros(2, 2, 2, 2), torch.zeros(2, 3, 2, 2))
    with pytest.raises(TypeError, match="share dtype and device"):
        haar_reconstruct(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, 2, dtype=torch.float64))


def test_pyramid_divisibility_and_levels():
    with pytest.raises(ValueError, match="divisible by 4, got H=6, W=8"):
        haar_pyramid(torch.zeros(1, 1, 6, 8), levels=3)
    with pytest.raises(ValueError, match="levels must be a positive integer, got 0"):
        haar_pyramid(torch.zeros(1, 1, 4, 4), levels=0)


def test_flow_inputs():
    with pytest.raises(ValueError, match=r"divisible by 4, got shape \(1, 6, 2, 2\)"):
        HaarSqueeze()(torch.zeros(1, 6, 2, 2))
    with pytest.raises(ValueError, match="takes a pair \\[coarse, details\\], got 3 items"):
        HaarMerge()([torch.zeros(1)] * 3)
