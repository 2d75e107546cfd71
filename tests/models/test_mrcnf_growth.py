"""MRCNF.grow with per-level options: the grown model equals one assembled independently, its old levels compute
exactly their old terms, the new level gets its own net options, and frozen levels cost no flow-matching work."""

from __future__ import annotations

import pytest
import torch

from flowplug import haar_decompose
from flowplug.models.mrcnf import MRCNF

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SOLVER = {"method": "rk4", "step_size": 1.0}
PER_LEVEL = [{"hidden_channels": 6, "num_blocks": 1}, {"hidden_channels": 4, "num_blocks": 2}]
OPTIONS = {"net": "res_odenet", "logit_alpha": 1e-3, "detail_stretch": 1 / 64, "divergence": "exact",
           "train_solver": SOLVER, "eval_solver": SOLVER}


def perturbed(model: MRCNF, seed: int = 1) -> MRCNF:
    """Move the trainable parameters off their initial values and set the standardisation from data, so each
    level does something (after grow(), only the new level's)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in filter(lambda p: p.requires_grad, model.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    model.initialize_from_data(images(16, model.image_shape, seed=seed))
    return model


def images(n: int, shape, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def parent_model() -> MRCNF:
    torch.manual_seed(0)
    return perturbed(MRCNF((1, 4, 4), levels=2, net_options=PER_LEVEL, **OPTIONS).double()).eval()


def test_grown_model_equals_an_independently_assembled_one():
    parent = parent_model()
    grown = perturbed(parent.grow(), seed=2).eval()  # the new level 0 trained a little, too
    independent = MRCNF((1, 8, 8), levels=3, net_options=[PER_LEVEL[0], *PER_LEVEL], **OPTIONS).double().eval()
    assert independent.config == grown.config
    moved = {key.replace(f"levels.{s}.", f"levels.{s + 1}.", 1): value
             for s in range(2) for key, value in parent.state_dict().items() if key.startswith(f"levels.{s}.")}
    independent.load_levels(moved, [1, 2])
    independent.load_levels(grown, [0])
    v = images(3, (1, 8, 8))
    with torch.no_grad():
        assert torch.equal(independent.log_prob(v), grown.log_prob(v))


def test_old_levels_terms_are_unchanged_bit_for_bit_on_the_same_coarse_images():
    parent = parent_model()
    grown = perturbed(parent.grow(), seed=2).eval()
    v = images(3, (1, 8, 8))
    coarse, _ = haar_decompose(v)  # the 2×2 block means: the grown model's x_1
    torch.testing.assert_close(coarse, v.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)), rtol=0, atol=1e-15)
    with torch.no_grad():
        old, new = parent.level_log_probs(coarse), grown.level_log_probs(v)
    assert len(new) == 3
    for before, after in zip(old, new[1:], strict=True):
        assert torch.equal(before, after)


def test_the_new_level_gets_the_finest_levels_net_options_unless_given():
    parent = MRCNF((1, 4, 4), levels=2, net_options=PER_LEVEL, **OPTIONS)
    assert parent.grow().config["net_options"] == [PER_LEVEL[0], *PER_LEVEL]
    chosen = {"hidden_channels": 3, "num_blocks": 1}
    assert parent.grow(net_options=chosen).config["net_options"] == [chosen, *PER_LEVEL]
    assert parent.grow(net_options={}).config["net_options"] == [{}, *PER_LEVEL]  # the net's own defaults
    shared = MRCNF((1, 4, 4), levels=2, net_options=PER_LEVEL[1], **OPTIONS)
    assert shared.grow().config["net_options"] == PER_LEVEL[1]  # one dict for all levels stays one
    assert shared.grow(net_options=chosen).config["net_options"] == [chosen, PER_LEVEL[1], PER_LEVEL[1]]
    grown = shared.grow(net_options=chosen)
    assert [grown.levels[s].flows[0].net.input.out_channels for s in range(3)] == [3, 4, 4]
    with pytest.raises(TypeError, match=r"grow\(net_options=...\) configures the default new level"):
        shared.grow([{"type": "standardize", "num_channels": 3}], net_options=chosen)


def test_frozen_levels_are_left_out_of_flow_matching():
    grown = parent_model().grow()
    v = images(4, (1, 8, 8))
    torch.manual_seed(0)
    terms = grown.level_flow_matching_losses(v)
    assert [t.item() for t in terms[1:]] == [0.0, 0.0] and terms[0].item() > 0
    torch.stack(terms).sum().backward()
    assert all(p.grad is None for p in grown.levels[1:].parameters())
    assert all(p.grad is not None for p in grown.levels[0].parameters())
