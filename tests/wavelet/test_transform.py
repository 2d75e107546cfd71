"""The functional Haar transform against an independent 4×4-matrix implementation (docs/design.md §1)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flowplug import haar_decompose, haar_pyramid, haar_pyramid_reconstruct, haar_reconstruct

C = 2.0 ** (2.0 / 3.0)
# Rows: xbar, y1, y2, y3; columns: x1 = [0,0], x2 = [0,1], x3 = [1,0], x4 = [1,1] of each 2×2 block.
MATRIX = np.array(
    [
        [1 / 4, 1 / 4, 1 / 4, 1 / 4],
        [1 / C, 1 / C, -1 / C, -1 / C],
        [1 / C, -1 / C, 1 / C, -1 / C],
        [1 / C, -1 / C, -1 / C, 1 / C],
    ]
)


def reference_decompose(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-block loop with the explicit matrix: slow, obviously right."""
    b, c, h, w = x.shape
    coarse = np.empty((b, c, h // 2, w // 2))
    details = np.empty((b, 3 * c, h // 2, w // 2))
    for n in range(b):
        for ch in range(c):
            for i in range(h // 2):
                for j in range(w // 2):
                    block = x[n, ch, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(4)
                    out = MATRIX @ block
                    coarse[n, ch, i, j] = out[0]
                    for k in range(3):
                        details[n, k * c + ch, i, j] = out[k + 1]
    return coarse, details


image_shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 4), st.integers(1, 4).map(lambda n: 2 * n), st.integers(1, 4).map(lambda n: 2 * n)
)
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@given(image_shapes.flatmap(lambda s: arrays(np.float64, s, elements=finite)))
def test_decompose_matches_explicit_matrix(x):
    coarse, details = haar_decompose(torch.from_numpy(x))
    ref_coarse, ref_details = reference_decompose(x)
    scale = max(1.0, float(np.abs(x).max()))
    np.testing.assert_allclose(coarse.numpy(), ref_coarse, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(details.numpy(), ref_details, rtol=0, atol=1e-12 * scale)


@given(image_shapes.flatmap(lambda s: arrays(np.float64, s, elements=finite)))
def test_round_trip_float64(x):
    xt = torch.from_numpy(x)
    back = haar_reconstruct(*haar_decompose(xt))
    scale = max(1.0, float(np.abs(x).max()))
    assert torch.allclose(back, xt, rtol=0, atol=1e-12 * scale)
    # and the other way round: details/coarse → image → details/coarse
    coarse, details = haar_decompose(xt)
    again = haar_decompose(haar_reconstruct(coarse, details))
    assert torch.allclose(again[0], coarse, rtol=0, atol=1e-12 * scale)
    assert torch.allclose(again[1], details, rtol=0, atol=1e-12 * scale)


@given(image_shapes, st.integers(0, 2**31 - 1))
def test_round_trip_float32_relative(shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    back = haar_reconstruct(*haar_decompose(x))
    assert back.dtype == torch.float32
    assert torch.allclose(back, x, rtol=1e-5, atol=1e-5 * float(x.abs().max()))


def test_layout_band_major_and_coarse_is_block_mean():
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float64).view(2, 2, 4, 4)
    coarse, details = haar_decompose(x)
    assert coarse.shape == (2, 2, 2, 2) and details.shape == (2, 6, 2, 2)
    assert torch.equal(coarse, torch.nn.functional.avg_pool2d(x, 2))
    # channel 1's y2 lives at details[:, 1*C + 1] = details[:, 3]
    x1, x2, x3, x4 = x[:, 1, 0::2, 0::2], x[:, 1, 0::2, 1::2], x[:, 1, 1::2, 0::2], x[:, 1, 1::2, 1::2]
    assert torch.allclose(details[:, 3], (x1 - x2 + x3 - x4) / C, atol=1e-12)
    assert coarse.is_contiguous() and details.is_contiguous()


def test_log_det_of_brute_force_jacobian_is_zero():
    def flat_decompose(v):
        coarse, details = haar_decompose(v.view(1, 2, 4, 2))
        return torch.cat([coarse.flatten(), details.flatten()])

    jacobian = torch.autograd.functional.jacobian(flat_decompose, torch.randn(16, dtype=torch.float64))
    sign, logabsdet = torch.linalg.slogdet(jacobian)
    assert abs(logabsdet.item()) < 1e-12
    assert math.isclose(abs(sign.item()), 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_both_directions_and_higher_order(dtype):
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(haar_decompose, (x,))
    assert torch.autograd.gradgradcheck(haar_decompose, (x,))
    coarse, details = (t.detach().requires_grad_() for t in haar_decompose(x))
    assert torch.autograd.gradcheck(haar_reconstruct, (coarse, details))
    assert torch.autograd.gradgradcheck(haar_reconstruct, (coarse, details))
    # gradients flow in the working dtype too
    y = torch.randn(1, 1, 2, 2, dtype=dtype, requires_grad=True)
    haar_decompose(y)[0].sum().backward()
    assert y.grad.dtype == dtype and torch.allclose(y.grad, torch.full_like(y, 0.25))


def test_bfloat16_and_non_contiguous_input():
    x = torch.randn(2, 4, 6, 8).permute(0, 1, 3, 2)  # non-contiguous (2, 4, 8, 6)
    coarse, details = haar_decompose(x)
    ref_coarse, ref_details = haar_decompose(x.contiguous())
    assert torch.equal(coarse, ref_coarse) and torch.equal(details, ref_details)
    xb = x.to(torch.bfloat16)
    cb, db = haar_decompose(xb)
    assert cb.dtype == torch.bfloat16
    assert torch.allclose(haar_reconstruct(cb, db).float(), xb.float(), atol=0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reconstruct_in_half_precision_matches_float32(dtype):
    coarse, details = haar_decompose(torch.randn(2, 3, 6, 8))
    low = haar_reconstruct(coarse.to(dtype), details.to(dtype))
    assert low.dtype == dtype
    ref = haar_reconstruct(coarse.to(dtype).float(), details.to(dtype).float())
    torch.testing.assert_close(low, ref.to(dtype))


def test_reconstruct_non_contiguous_and_expanded_inputs():
    coarse, details = haar_decompose(torch.randn(2, 3, 6, 8, dtype=torch.float64))
    strided = haar_reconstruct(
        coarse.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),  # channels-last storage
        torch.cat([details, details], dim=1)[:, ::2],  # every other channel of a doubled tensor
    )
    doubled = torch.cat([details, details], dim=1)[:, ::2].contiguous()
    torch.testing.assert_close(strided, haar_reconstruct(coarse, doubled), rtol=0, atol=0)
    # the gradient of a sum reaches the synthesis as an expanded (stride-0) tensor
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    haar_decompose(x)[1].sum().backward()
    expected = torch.tensor([[3.0, -1.0], [-1.0, -1.0]], dtype=torch.float64) / C
    torch.testing.assert_close(x.grad[0, 0], expected, rtol=0, atol=1e-15)


@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_pyramid_round_trip_and_shapes(levels, channels, seed):
    size = 2 ** (levels - 1) * 2
    x = torch.randn(2, channels, size, 2 * size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    details, coarsest = haar_pyramid(x, levels)
    assert len(details) == levels - 1
    for s, y in enumerate(details):
        assert y.shape == (2, 3 * channels, size >> (s + 1), (2 * size) >> (s + 1))
    assert coarsest.shape == (2, channels, size >> (levels - 1), (2 * size) >> (levels - 1))
    assert torch.allclose(
        coarsest, torch.nn.functional.avg_pool2d(x, 2 ** (levels - 1)), atol=1e-12
    )
    assert torch.allclose(haar_pyramid_reconstruct(details, coarsest), x, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x = torch.randn(3, 3, 8, 8, dtype=dtype)
    cpu = haar_decompose(x)
    gpu = haar_decompose(x.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a)
    torch.testing.assert_close(haar_reconstruct(*gpu).cpu(), x)
