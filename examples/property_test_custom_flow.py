"""Property-test a custom flow (Glow blocks + Haar squeeze + a CNF) with ``flowplug.testing`` and Hypothesis.

The flow is composed from registry specs in normflows' order (the first component acts first when sampling):
a tiny CNF on the squeezed side, flowplug's Haar squeeze, then two normflows Glow blocks on the image side.
Hypothesis draws random float64 image batches (including edge values and constant images) and the tests
check, for every draw, that the flow is invertible in both directions, that its returned log-determinants
equal those of the brute-force autograd Jacobian, and that each sample is transformed independently of its
batch. The CNF uses the exact trace and fixed-step RK4 so that the checks are fast and deterministic; its
inverse is exact only up to the solver error, hence the 1e-6 tolerances.

The ``test_*`` functions are ordinary Hypothesis tests: ``python -m pytest examples/property_test_custom_flow.py``
runs them, 10 examples each on 2×2 images with no deadline (set here: Hypothesis's default 200 ms deadline is too
short for the Jacobian check). Run as a script, this file runs each check with its own settings and prints a
pass line:

    python examples/property_test_custom_flow.py              # full: 20 examples per property on 2x2 and 4x4
    python examples/property_test_custom_flow.py --quick      # 5 examples per property on 2x2 images

Needs Hypothesis (``pip install -e ".[test]"``). The cost grows with the square of the image size (the Jacobian
check takes one backward pass per input dimension, the exact-trace CNF one more per dimension inside each solve),
so the full run, which also draws 4×4 images, takes several minutes; the quick one keeps to 2×2 images.

A failure raises the assertion's message (worst sample and element) with Hypothesis's minimal example.
"""

from __future__ import annotations

import argparse
import time
import warnings

import flowplug  # before torch: lets torch's idle OpenMP threads sleep (flowplug.threads)

# isort: split
import torch
from hypothesis import given, settings
from hypothesis.strategies import SearchStrategy

from flowplug.testing import (
    ComposedFlow,
    assert_batch_independent,
    assert_invertible,
    assert_log_det_correct,
    image_shapes,
    images,
    perturb_parameters,
)

# normflows' Invertible1x1Conv (in every Glow block) calls the deprecated torch.lu when it is built: not ours to fix
warnings.filterwarnings("ignore", message=r"torch\.lu is deprecated", category=UserWarning)

CHANNELS = 2
SOLVER = {"method": "rk4", "step_size": 0.25}
TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}  # an RK4 solve is inverted only up to its error


def custom_flow(seed: int = 0) -> ComposedFlow:
    """CNF on (4C, H/2, W/2) ← Haar squeeze ← two Glow blocks on (C, H, W), in float64 away from identity."""
    torch.manual_seed(seed)
    flow = ComposedFlow(flowplug.build([
        {"type": "cnf", "net": {"type": "conv_odenet", "channels": 4 * CHANNELS, "hidden_channels": 8},
         "divergence": "exact", "train_solver": SOLVER, "eval_solver": SOLVER},
        "haar_squeeze",
        {"type": "glow_block", "channels": CHANNELS, "hidden_channels": 8},
        {"type": "glow_block", "channels": CHANNELS, "hidden_channels": 8},
    ]))
    # Zero-initialised layers start as the identity, where many bugs hide.
    return perturb_parameters(flow.double().eval())


FLOW = custom_flow()
BATCHES = images(image_shapes(batch=2, channels=CHANNELS, height=(2, 4), multiple_of=2))
QUICK_BATCHES = images(image_shapes(batch=2, channels=CHANNELS, height=2))


def check_invertible(x: torch.Tensor) -> None:
    assert_invertible(FLOW, x, **TOLERANCE)


def check_log_det_matches_jacobian(x: torch.Tensor) -> None:
    assert_log_det_correct(FLOW, x, **TOLERANCE)


def check_batch_independent(x: torch.Tensor) -> None:
    assert_batch_independent(FLOW, x, **TOLERANCE)


CHECKS = (check_invertible, check_log_det_matches_jacobian, check_batch_independent)


# What pytest collects: each check as a Hypothesis test on 2×2 images, with settings that pass without a profile.
PYTEST_SETTINGS = settings(max_examples=10, deadline=None)


@PYTEST_SETTINGS
@given(x=QUICK_BATCHES)
def test_invertible(x: torch.Tensor) -> None:
    check_invertible(x)


@PYTEST_SETTINGS
@given(x=QUICK_BATCHES)
def test_log_det_matches_jacobian(x: torch.Tensor) -> None:
    check_log_det_matches_jacobian(x)


@PYTEST_SETTINGS
@given(x=QUICK_BATCHES)
def test_batch_independent(x: torch.Tensor) -> None:
    check_batch_independent(x)


def run(check, batches: SearchStrategy, examples: int) -> None:
    """``check`` as a Hypothesis test on ``batches`` with ``examples`` examples, the same ones on every run."""
    profile = settings(max_examples=examples, deadline=None, derandomize=True, database=None)
    profile(given(x=batches)(check))()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, help="Hypothesis examples per property (20, quick 5)")
    parser.add_argument("--quick", action="store_true", help="5 examples per property, 2x2 images only")
    args = parser.parse_args(argv)
    examples = args.examples or (5 if args.quick else 20)
    batches, sizes = (QUICK_BATCHES, "2x2") if args.quick else (BATCHES, "2x2 and 4x4")

    print(f"flow: {' -> '.join(type(f).__name__ for f in FLOW.flows)} (sampling order), float64, {sizes} images")
    for check in CHECKS:
        start = time.perf_counter()
        run(check, batches, examples)
        print(f"PASS {check.__name__.removeprefix('check_')}: {examples} examples in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    print(f"all {len(CHECKS)} properties hold")


if __name__ == "__main__":
    main()
