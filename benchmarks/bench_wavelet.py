"""Haar transform against pixel_unshuffle and a same-size copy (pytest-benchmark).

Run: ``pytest benchmarks/bench_wavelet.py --benchmark-enable --benchmark-group-by=param:shape``.
The transform is memory-bound, so the copy is its floor; compare ratios within one run.
"""

import pytest
import torch
import torch.nn.functional as F

from flowplug import haar_decompose, haar_reconstruct

SHAPES = [(64, 3, 32, 32), (16, 3, 256, 256)]


@pytest.fixture(params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def shape(request):
    return request.param


@pytest.fixture
def image(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def test_copy(benchmark, image):
    benchmark(image.clone)


def test_pixel_unshuffle(benchmark, image):
    benchmark(F.pixel_unshuffle, image, 2)


def test_haar_decompose(benchmark, image):
    benchmark(haar_decompose, image)


def test_haar_reconstruct(benchmark, image):
    coarse, details = haar_decompose(image)
    benchmark(haar_reconstruct, coarse, details)
