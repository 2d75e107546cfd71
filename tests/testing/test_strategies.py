"""The strategies draw what they promise; the profiles load; the ImportError without Hypothesis is clear."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowplug.testing import (
    image_shapes,
    register_component_strategy,
    sizes,
    tensors,
    vector_shapes,
)
from flowplug.testing.profiles import CI_PROFILE, ENV_VAR, THOROUGH_PROFILE, load_profile


@given(shape=image_shapes(batch=2, channels=(1, 3), height=(2, 16), multiple_of=4))
def test_image_shapes_respect_divisibility(shape):
    batch, channels, height, width = shape
    assert batch == 2 and 1 <= channels <= 3
    assert height % 4 == 0 and width % 4 == 0 and 4 <= height <= 16 and 4 <= width <= 16


@given(shape=vector_shapes(batch=(1, 3), features=5))
def test_vector_shapes(shape):
    assert 1 <= shape[0] <= 3 and shape[1] == 5


def test_sizes_refuses_a_range_without_multiples():
    with pytest.raises(ValueError, match="holds no multiple of 4"):
        sizes((5, 7), multiple_of=4)


@given(
    x=tensors(
        st.sampled_from([(2, 3), [(2, 1, 2), (2, 3, 2)]]),
        dtype=st.sampled_from([torch.float32, torch.float64]),
        low=0.0,
        high=1.0,
    )
)
def test_tensors_have_the_shape_dtype_and_range_asked_for(x):
    items = x if isinstance(x, list) else [x]
    assert items[0].dtype in (torch.float32, torch.float64)
    for item in items:
        assert item.dtype == items[0].dtype and item.device.type == "cpu"
        assert bool(((item >= 0) & (item <= 1)).all())


def test_tensors_draw_edge_values_and_constant_batches():
    seen = {"edge": False, "constant": False}

    @given(x=tensors((3, 4), low=-1.0, high=1.0))
    def record(x):
        seen["edge"] |= bool(((x == -1) | (x == 1) | (x == 0)).any())
        seen["constant"] |= bool((x == x.view(-1)[0]).all())

    record()
    assert seen == {"edge": True, "constant": True}


@given(x=tensors((3, 4), constant=False))
def test_tensors_without_constant_batches(x):
    assert not bool((x == x.view(-1)[0]).all())


def test_register_component_strategy_refuses_duplicates_and_bad_ranges():
    with pytest.raises(ValueError, match="already has a strategy"):
        register_component_strategy("glow_block", st.just(({}, (1,))))
    with pytest.raises(ValueError, match="low < high"):
        register_component_strategy("new_flow", st.just(({}, (1,))), value_range=(1.0, 0.0))


def test_load_profile_by_name_env_var_and_default(monkeypatch):
    from hypothesis import settings

    current = settings._current_profile
    try:
        monkeypatch.setenv(ENV_VAR, THOROUGH_PROFILE)
        assert load_profile() == THOROUGH_PROFILE and settings().max_examples == 300
        monkeypatch.delenv(ENV_VAR)
        assert load_profile() == CI_PROFILE and settings().max_examples == 10
        with pytest.raises(ValueError, match="unknown Hypothesis profile 'nope'"):
            load_profile("nope")
    finally:
        settings.load_profile(current)


def test_assertions_import_without_hypothesis_and_strategies_say_what_to_install():
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "from flowplug.testing import assert_invertible\n"
        "try:\n    from flowplug.testing import tensors\n"
        "except ImportError as error:\n    print(error)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert "pip install flowplug[test]" in out.stdout and "pip install hypothesis" in out.stdout
