"""A class-conditional MRCNF trained with label dropout: the null label it learns, where it is (and is not) used,
and classifier-free guided sampling (flowplug.cnf.guidance) through every level."""

from __future__ import annotations

import pytest
import torch

import flowplug
from flowplug import MRCNF
from flowplug.condition import ConditionEncoder
from flowplug.testing import perturb_parameters

STEPS = {"method": "rk4", "step_size": 0.25}


def _model(solver=STEPS, **options) -> MRCNF:
    """A tiny float64 two-level conditional model on 4×4 images, moved off the identity flow."""
    torch.manual_seed(0)
    model = MRCNF((1, 4, 4), levels=2, num_classes=3, hidden_channels=4, num_blocks=1, time_dim=4, groups=2,
                  train_solver=solver, eval_solver=solver, **options)
    perturb_parameters(model.double(), std=0.1, seed=1)
    return model.eval()


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.9 + 0.05


def test_label_dropout_adds_one_null_row_and_is_written_to_the_config():
    model = _model(label_dropout=0.2)
    assert model.can_guide and model.config["label_dropout"] == 0.2
    assert all(level.condition.embedding.num_embeddings == 4 for level in model.levels)  # 3 classes + null
    rebuilt = flowplug.build(model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    plain = _model()
    assert not plain.can_guide and "label_dropout" not in plain.config
    assert all(level.condition.embedding.num_embeddings == 3 for level in plain.levels)


def test_the_null_label_is_trained_by_flow_matching_only():
    model = _model(label_dropout=0.5).train()
    v, y = _images(16), torch.arange(16) % 3
    torch.manual_seed(0)
    model.flow_matching_loss(v, y=y).backward()
    for level in model.levels:  # the null row (index 3) and the classes' rows all get gradients
        assert (level.condition.embedding.weight.grad.abs().sum(1) > 0).all()
    # scoring and unguided sampling never read the null row: a NaN there leaves them finite
    with torch.no_grad():
        for level in model.levels:
            level.condition.embedding.weight[3] = float("nan")
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(v, y)).all()
        assert torch.isfinite(model.sample(3, y=1)[0]).all()
        model.train()
        assert torch.isfinite(model.trainable_log_prob(v, y)).all()


def test_guidance_zero_samples_the_model_and_other_weights_change_the_samples():
    model = _model(label_dropout=0.1)
    with torch.no_grad():
        torch.manual_seed(5)
        plain = model.sample(3, y=2)
        torch.manual_seed(5)
        zero = model.sample(3, y=2, guidance=0.0)
        torch.manual_seed(5)
        guided = model.sample(3, y=2, guidance=2.0)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])
    assert (plain[0] - guided[0]).abs().max() > 1e-6 and torch.isfinite(guided[1]).all()


def test_guidance_changes_nothing_for_a_label_embedded_like_the_null_label():
    # f_w = f(c) + w (f(c) - f(null)) = f(c) when the label's features equal the null label's, at every level
    model = _model(label_dropout=0.1)
    with torch.no_grad():
        for level in model.levels:
            level.condition.embedding.weight[1] = level.condition.embedding.weight[3]
        torch.manual_seed(5)
        plain = model.sample(3, y=1)
        torch.manual_seed(5)
        guided = model.sample(3, y=1, guidance=3.0)
        coarse = torch.rand(2, 1, 2, 2, dtype=torch.float64)
        torch.manual_seed(6)
        up = model.super_resolve(coarse, y=1)
        torch.manual_seed(6)
        guided_up = model.super_resolve(coarse, y=1, guidance=3.0)
    torch.testing.assert_close(guided[0], plain[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(guided[1], plain[1], atol=1e-10, rtol=0)
    torch.testing.assert_close(guided_up, up, atol=1e-12, rtol=0)


def test_guided_log_q_is_the_guided_samplers_density():
    # the guided flow inverted from its samples returns the latents: log q is that flow's exact density
    model = _model({"method": "dopri5", "atol": 1e-11, "rtol": 1e-11}, label_dropout=0.1, divergence="exact")
    level = model.levels[-1]  # the coarsest level: context is the label's features alone
    y = torch.tensor([0, 2])
    guide = model._guidance(level, None, y, 1.5, torch.float64)
    with torch.no_grad():
        torch.manual_seed(7)
        x, log_q = level.sample(2, context=level.context_for(None, y, torch.float64), guidance=guide)
        cnf = level.single_cnf("guided sampling")
        prepared = flowplug.conditioning.run_inverse(level._preparation(), x)
        z, log_det = cnf.inverse(prepared[0], level.context_for(None, y, torch.float64), guidance=guide)
        expected = level.base.log_prob(z) + log_det + prepared[1]
    torch.testing.assert_close(log_q, expected, atol=1e-8, rtol=0)


def test_wrong_dropout_and_guidance_are_named():
    with pytest.raises(ValueError, match="it needs num_classes"):
        MRCNF((1, 4, 4), levels=2, label_dropout=0.1)
    with pytest.raises(ValueError, match="it needs num_classes"):
        MRCNF((1, 4, 4), levels=2, condition_dim=2, label_dropout=0.1)
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"label_dropout must be a probability in \[0, 1\)"):
            MRCNF((1, 4, 4), levels=2, num_classes=3, label_dropout=bad)
    with pytest.raises(ValueError, match="a null class is a label; it needs num_classes"):
        ConditionEncoder(condition_dim=2, null_class=True)
    with pytest.raises(ValueError, match="no null class"):
        ConditionEncoder(num_classes=3).null_labels(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="trained with label_dropout > 0"):
        _model().sample(2, y=0, guidance=1.0)
    with pytest.raises(ValueError, match="guidance weight must be a finite number"):
        _model(label_dropout=0.1).sample(2, y=0, guidance=float("nan"))
