"""Class-conditional Glow and RealNVP, normflows' class-conditional GlowBase behind flowplug's model API
(issue 27's baseline)."""

from __future__ import annotations

import pytest
import torch

import flowplug
from flowplug import Glow, RealNVP
from flowplug.data import ImageData
from flowplug.testing import (
    assert_condition_matters,
    assert_conditional_flow,
    assert_conditional_sampling,
    perturb_parameters,
)
from flowplug.train import TrainConfig, Trainer


def _glow(**options) -> Glow:
    torch.manual_seed(0)
    model = Glow((1, 4, 4), levels=1, depth=1, hidden_channels=4, num_classes=3, **options).double()
    v = torch.rand(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model.log_prob(v, torch.arange(8) % 3)  # ActNorm's data-dependent initialisation
    perturb_parameters(model, std=0.1, seed=2)
    return model.eval()


def test_conditional_glow_is_exact_for_every_label():
    model = _glow()
    v = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert_conditional_flow(model, v)
    assert_conditional_sampling(model, num_samples=3)
    assert_condition_matters(model, v)


@pytest.mark.parametrize("kind", [Glow, RealNVP])
def test_configs_record_num_classes_only_when_set(kind):
    assert "num_classes" not in kind((1, 4, 4), levels=1, depth=1, hidden_channels=4).config
    model = kind((1, 4, 4), levels=1, depth=1, hidden_channels=4, num_classes=2)
    assert model.config["num_classes"] == 2 and flowplug.build(model.config).num_classes == 2


def test_labels_checked():
    model = _glow()
    v = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs y"):
        model.log_prob(v)
    with pytest.raises(ValueError, match="label 5 is out of range"):
        model.sample(2, y=5)
    with pytest.raises(ValueError, match="is unconditional"):
        Glow((1, 4, 4), levels=1, depth=1, hidden_channels=4).log_prob(v.float(), torch.zeros(2, dtype=torch.int64))


def test_conditional_glow_trains_by_likelihood_through_the_trainer():
    x = torch.randint(0, 4, (16, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ImageData(x, 4, "tiny", y=torch.arange(16) % 2)
    model = Glow((1, 4, 4), levels=1, depth=1, hidden_channels=4, num_classes=2)
    trainer = Trainer(model, TrainConfig(steps=2, batch_size=8, progress=False), device="cpu")
    report = trainer.fit(data, data)
    assert report["held_out"]["conditional"] is True
    assert model.flow.q0[0].loc_cc.grad is not None
