"""Whole-model costs with pytest-benchmark: training steps, sampling and ``log_prob``.

    python -m pytest benchmarks/bench_models.py --benchmark-enable --benchmark-group-by=group

Groups (pytest-benchmark prints each group's rows with their ratio to the fastest, measured side
by side in one run; ``benchmarks/conftest.py`` pins one thread):

- ``cnf-step``: one likelihood training step of a single CNF on (3, 8, 8).
- ``step-32x32-likelihood`` / ``step-32x32-flow_matching``: one training step (loss, backward,
  AdamW update) of a 3-level MRCNF against a single-resolution CNF at (3, 32, 32) with the same
  net width (64) and batch. CNF solves use fixed-step rk4 (step 0.25, 16 evaluations per solve)
  for both, so the NFE is equal by construction and the ratio is the cost per evaluation of the
  levels' smaller tensors. With adaptive solvers the ratio also depends on each model's NFE.
- ``sample-16x16`` / ``log_prob-16x16``: per-call cost (batch of 4 images) of every compared
  model at (3, 16, 16) with small widths; CNFs evaluate with rk4 (step 0.25), so their figures
  are the cost at a fixed 16 evaluations per solve, not at a trained model's adaptive NFE.
"""

from __future__ import annotations

import pytest
import torch

import flowplug
from flowplug.data import Batch
from flowplug.train import get_objective

_RK4 = {"method": "rk4", "step_size": 0.25}


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
    model = _perturbed(flowplug.build({"type": "single_resolution_cnf", "image_shape": [3, 8, 8],
                                       "hidden_channels": 32, "train_solver": _RK4}))
    benchmark(_train_step(model, "likelihood", _images(16, (3, 8, 8))))


@pytest.mark.parametrize("objective", ["likelihood", "flow_matching"])
@pytest.mark.parametrize("levels", [3, 1], ids=["mrcnf-3-levels", "single-resolution"])
def test_step_32x32(benchmark, objective, levels):
    benchmark.group = f"step-32x32-{objective}"
    spec = {"type": "mrcnf", "image_shape": [3, 32, 32], "levels": levels,
            "hidden_channels": 64, "train_solver": _RK4}
    step = _train_step(_perturbed(flowplug.build(spec)), objective, _images(8, (3, 32, 32)))
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


SMALL_MODELS = {
    "mrcnf": {"type": "mrcnf", "levels": 2, "hidden_channels": 32, "eval_solver": _RK4},
    "single_resolution_cnf": {"type": "single_resolution_cnf", "hidden_channels": 32,
                              "eval_solver": _RK4},
    "glow": {"type": "glow", "levels": 2, "depth": 4, "hidden_channels": 64},
    "realnvp": {"type": "realnvp", "levels": 2, "depth": 2, "hidden_channels": 64},
}


@pytest.fixture(params=list(SMALL_MODELS))
def small_model(request):
    model = flowplug.build({**SMALL_MODELS[request.param], "image_shape": [3, 16, 16]})
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
