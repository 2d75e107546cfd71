"""The model contract (FlowModel): what a minimal model gets by default, and what the trainer relies on."""

from __future__ import annotations

import math

import pytest
import torch

import flowplug
from flowplug.conditioning import ComposedFlow
from flowplug.models.base import FlowModel
from flowplug.models.mrcnf import ResolutionLevel


class _Uniform(FlowModel):
    """The uniform density on [0, 1)^D: log p = 0."""

    image_shape = (1, 2, 2)

    def log_prob(self, v):
        self.check_input(v)
        return torch.zeros(v.shape[0])

    def sample(self, num_samples=1, temperature=None):
        return torch.rand(num_samples, *self.image_shape), torch.zeros(num_samples)


def test_a_minimal_model_gets_the_defaults():
    model, v = _Uniform(), torch.rand(3, 1, 2, 2)
    assert [t.tolist() for t in model.level_log_probs(v)] == [[0.0, 0.0, 0.0]]
    assert model.bits_per_dim(v, n_bins=16).tolist() == [4.0] * 3
    assert model.level_bits_per_dim(v)[0].tolist() == [0.0] * 3
    assert model.config is None and not model.is_continuous
    model.initialize_from_data(v)
    model.set_trainable_levels(None)
    with pytest.raises(ValueError, match="_Uniform has no levels"):
        model.set_trainable_levels([0])
    with pytest.raises(ValueError, match="_Uniform has no levels"):
        model.check_levels([])
    with pytest.raises(NotImplementedError, match="_Uniform has no flow-matching objective"):
        model.flow_matching_loss(v)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, 2, 2\)"):
        model.log_prob(torch.rand(3, 1, 4, 4))


def test_continuity_and_level_shares_of_mrcnf():
    model = flowplug.MRCNF((1, 4, 4), levels=2, hidden_channels=4, num_blocks=1,
                           train_solver={"method": "rk4", "step_size": 0.5})
    assert model.is_continuous and not flowplug.Glow((1, 8, 8), levels=1, depth=1).is_continuous
    v = torch.rand(2, 1, 4, 4)
    shares = model.level_bits_per_dim(v)
    torch.testing.assert_close(sum(shares) + math.log2(256), model.bits_per_dim(v))


def test_levels_are_the_core_composite():
    model = flowplug.MRCNF((1, 4, 4), levels=2, hidden_channels=4, num_blocks=1)
    assert all(isinstance(level, ResolutionLevel) and isinstance(level, ComposedFlow) for level in model.levels)
    level = model.levels[0]
    assert level.chain()[: len(level.flows)] == list(level.flows) and level.chain()[-1] is level.standardize
