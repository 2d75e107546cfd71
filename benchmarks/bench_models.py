"""Whole-model costs with pytest-benchmark: training steps, sampling and ``log_prob``.

    python -m pytest benchmarks/bench_models.py --benchmark-enable --benchmark-group-by=group

Groups (pytest-benchmark prints each group's rows with their ratio to the fastest, measured side
by side in one run; ``benchmarks/conftest.py`` pins one thread):

Every model is a recipe of the package (``flowplug recipes``) fitted to random 8-bit images of the stated size,
with fixed-step rk4 solves (step 0.25, 16 evaluations per solve) instead of the adaptive ones, so that CNFs'
figures are the cost at a fixed NFE, not at a trained model's adaptive NFE.

- ``cnf-step``: one likelihood training step of the ``single-resolution-cnf`` recipe on (3, 8, 8).
- ``step-32x32-likelihood`` / ``step-32x32-flow_matching``: one training step (loss, backward,
  AdamW update) of the ``mrcnf`` recipe (3 levels) against the ``single-resolution-cnf`` recipe at
  (3, 32, 32), whose nets have the same width (64) and blocks, at the same batch: the NFE is equal by
  construction and the ratio is the cost per evaluation of the levels' smaller tensors.
- ``sample-16x16`` / ``log_prob-16x16``: per-call cost (batch of 4 images) of every recipe at (3, 16, 16).
"""

from __future__ import annotations

import pytest
import torch

import flowplug
from flowplug.data import Batch, ImageData
from flowplug.recipes import plan, recipes
from flowplug.train import get_objective

_RK4 = {"method": "rk4", "step_size": 0.25}
_CNF_RECIPES = ("mrcnf", "single-resolution-cnf")


def _recipe_model(name: str, shape: tuple[int, int, int]) -> torch.nn.Module:
    """Recipe ``name`` fitted to random 8-bit images of ``shape``, its CNFs solving with rk4."""
    images = torch.randint(0, 256, (64, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    solvers = {"train_solver": _RK4, "eval_solver": _RK4} if name in _CNF_RECIPES else {}
    return flowplug.build(plan(name, ImageData(images, 256, "random"), model=solvers).model)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Move zero-initialised CNF nets off the identity so the benchmark does real arithmetic."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    return model


def _images(batch: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """Dequantised-looking images in [0, 1)."""
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))


def _train_step(model: torch.nn.Module, objective: str, v: torch.Tensor):
    """A closure doing one optimiser step of ``objective`` on ``v``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.initialize_from_data(v)
    model.train()
    loss_fn = get_objective(objective)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, Batch(v, 256))
        loss.backward()
        optimizer.step()

    return step


def test_cnf_training_step(benchmark):
    benchmark.group = "cnf-step"
    model = _perturbed(_recipe_model("single-resolution-cnf", (3, 8, 8)))
    benchmark(_train_step(model, "likelihood", _images(16, (3, 8, 8))))


@pytest.mark.parametrize("objective", ["likelihood", "flow_matching"])
@pytest.mark.parametrize("name", _CNF_RECIPES)
def test_step_32x32(benchmark, objective, name):
    benchmark.group = f"step-32x32-{objective}"
    step = _train_step(_perturbed(_recipe_model(name, (3, 32, 32))), objective, _images(8, (3, 32, 32)))
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


@pytest.fixture(params=recipes())
def small_model(request):
    model = _recipe_model(request.param, (3, 16, 16))
    v = _images(4, (3, 16, 16))
    initialize = getattr(model, "initialize_from_data", None)
    with torch.no_grad():
        if callable(initialize):
            initialize(v)
        model.log_prob(v)  # data-dependent initialisation (ActNorm) happens on the first pass
    return _perturbed(model).eval(), v


def test_sample(benchmark, small_model):
    benchmark.group = "sample-16x16"
    model, v = small_model
    with torch.no_grad():
        benchmark.pedantic(model.sample, args=(v.shape[0],), rounds=5, warmup_rounds=1)


def test_log_prob(benchmark, small_model):
    benchmark.group = "log_prob-16x16"
    model, v = small_model
    with torch.no_grad():
        benchmark.pedantic(model.log_prob, args=(v,), rounds=5, warmup_rounds=1)
