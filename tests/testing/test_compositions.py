"""Random shape-compatible chains of registered image components, built through the registry."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from flowplug.testing import (
    assert_invertible,
    assert_log_det_correct,
    default_tolerances,
    devices,
    image_compositions,
    tensors,
)


@given(case=image_compositions(), device=devices(), data=st.data())
def test_random_composition_is_invertible_with_correct_log_det(case, device, data):
    flow = case.build(torch.float64, device)
    # no constant batches: stacked ActNorms initialised on a zero spread scale by ~1e6 each, an
    # ill-conditioned chain whose round trip loses digits even in float64
    x = data.draw(tensors(case.input_shape, dtype=torch.float64, device=device, constant=False), label="x")
    atol, rtol = case.tolerances or default_tolerances(torch.float64)
    assert_invertible(flow, x, atol=atol, rtol=rtol)
    assert_log_det_correct(flow, x, atol=atol, rtol=rtol)


@given(case=image_compositions(max_length=6, names=["act_norm", "squeeze", "haar_squeeze"]))
def test_compositions_stay_shape_compatible(case):
    channels, height, width = case.input_shape[1:]
    for spec in reversed(case.specs):  # data side first
        if spec["type"] in ("squeeze", "haar_squeeze"):
            assert height % 2 == 0 and width % 2 == 0
            channels, height, width = 4 * channels, height // 2, width // 2
        else:
            assert spec["shape"] == (channels, 1, 1)
    assert channels <= 16
