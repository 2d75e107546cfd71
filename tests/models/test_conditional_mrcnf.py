"""Class- and vector-conditional MRCNF (issue 27): exact maths on tiny float64 models, every label, and the
errors that name a wrong, missing or unwanted condition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import flowplug
from flowplug import MRCNF
from flowplug.testing import (
    assert_condition_matters,
    assert_conditional_flow,
    assert_conditional_sampling,
    assert_sample_log_prob_consistent,
    labels,
    perturb_parameters,
)

STEPS = {"method": "rk4", "step_size": 0.25}  # fixed steps: the round trip's error is rk4's, ~1e-10 here


def _model(levels: int = 2, shape=(1, 2, 2), **options) -> MRCNF:
    """A tiny float64 model (2×2 images: 4 dimensions, so brute-force Jacobians are cheap) with an exact trace,
    its parameters perturbed away from the identity flow."""
    torch.manual_seed(0)
    model = MRCNF(shape, levels=levels, net="conv_odenet", net_options={"hidden_channels": 4, "num_layers": 2},
                  divergence="exact", eval_divergence="exact", train_solver=STEPS, eval_solver=STEPS, **options)
    perturb_parameters(model.double(), std=0.1, seed=1)
    return model.eval()


def _images(n: int = 3, shape=(1, 2, 2)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.9 + 0.05


def test_every_level_is_conditioned_the_coarsest_included():
    model = _model(num_classes=3, embedding_dim=2)
    assert model.is_conditional and model.num_classes == 3
    assert model.levels[-1].context_shape == (2, 1, 1)  # the embedding alone: the coarsest has no coarse image
    assert model.levels[0].context_shape == (1 + 2, 1, 1)  # the coarse image, then the embedding
    assert all(level.condition is not None for level in model.levels)
    v = _images()
    for s in range(model.num_levels):  # each level's own term moves with the label
        first = model.level_log_probs(v, torch.zeros(3, dtype=torch.int64))[s]
        second = model.level_log_probs(v, torch.ones(3, dtype=torch.int64))[s]
        assert (first - second).abs().max() > 1e-6, s


def test_residual_nets_take_the_label_through_their_time_embedding():
    # the net's own maths is pinned exactly in tests/cnf (test_res_odenet_adds_a_condition_vector_...); the
    # model's exact maths with a condition by the conv-net models above
    torch.manual_seed(0)
    model = MRCNF((1, 4, 4), levels=2, num_classes=3, embedding_dim=2, hidden_channels=4, num_blocks=1,
                  time_dim=4, groups=2, train_solver=STEPS, eval_solver=STEPS)
    nets = [level.flows[0].net for level in model.levels]
    assert [net.vector_context for net in nets] == [2, 2]
    assert [net.input.in_channels for net in nets] == [3 + 1, 1]  # the coarse image only, not the embedding
    assert "vector_context" not in model.config  # the model sets it from the condition; configs stay as they were
    perturb_parameters(model.double(), std=0.1, seed=1)
    v = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.9 + 0.05
    with torch.no_grad():
        first = model.level_log_probs(v, torch.zeros(3, dtype=torch.int64))
        second = model.level_log_probs(v, torch.full((3,), 2, dtype=torch.int64))
    assert all((a - b).abs().min() > 1e-6 for a, b in zip(first, second, strict=True))


def test_invertible_with_exact_log_det_for_every_label():
    model = _model(num_classes=3, embedding_dim=2)
    assert_conditional_flow(model, _images(2), atol=1e-7, rtol=1e-7)
    assert_condition_matters(model, _images(2))


def test_samples_score_their_log_q_for_every_label():
    model = _model(num_classes=3, embedding_dim=2)
    assert_conditional_sampling(model, num_samples=3, atol=1e-7, rtol=1e-7)
    # per-sample labels and a single int label give the same images as the same labels spelled out
    torch.manual_seed(5)
    v1, q1 = model.sample(3, y=2)
    torch.manual_seed(5)
    v2, q2 = model.sample(3, y=torch.full((3,), 2))
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(q1, q2)


def test_vector_condition():
    model = _model(condition_dim=2)
    assert model.condition_dim == 2 and not any(p.numel() for lvl in model.levels for p in lvl.condition.parameters())
    v = _images(2)
    y = torch.tensor([[0.5, -1.0], [2.0, 0.1]], dtype=torch.float64)
    assert_sample_log_prob_consistent(model, 2, context=y, atol=1e-7, rtol=1e-7)
    assert (model.log_prob(v, y) - model.log_prob(v, -y)).abs().max() > 1e-6
    with pytest.raises(TypeError, match=r"float32 but the inputs are torch\.float64"):
        model.log_prob(v, y.float())
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        model.log_prob(v, y[:, :1])


def test_config_rebuilds_and_unconditional_config_is_unchanged():
    model = _model(num_classes=4)
    assert model.config["num_classes"] == 4 and "embedding_dim" not in model.config
    rebuilt = flowplug.build(model.config)
    assert rebuilt.num_classes == 4
    assert set(rebuilt.state_dict()) == set(model.state_dict())
    plain = MRCNF((1, 4, 4), levels=2)
    assert not plain.is_conditional
    assert not {"num_classes", "condition_dim", "embedding_dim"} & set(plain.config)
    assert not any("condition" in key for key in plain.state_dict())


def test_unconditional_model_is_bit_identical_to_one_built_before_conditions():
    # the same seed draws the same weights: conditions add no module and no random draw to an unconditional model
    torch.manual_seed(3)
    a = MRCNF((1, 4, 4), levels=2)
    torch.manual_seed(3)
    b = flowplug.build({"type": "mrcnf", "image_shape": [1, 4, 4], "levels": 2})
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), key


@pytest.mark.parametrize(
    ("y", "error", "match"),
    [
        (None, ValueError, "is conditional and needs y"),
        (torch.tensor([0, 1, 3]), ValueError, "label 3 is out of range; this model has classes 0..2"),
        (torch.tensor([0, -1, 2]), ValueError, "label -1 is out of range"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "dtype torch.float32"),
        (torch.tensor([0, 1]), ValueError, r"got shape \(2,\)"),
        ([0, 1, 2], TypeError, "must be a torch.Tensor"),
    ],
)
def test_wrong_labels_are_named(y, error, match):
    model = _model(num_classes=3)
    with pytest.raises(error, match=match):
        model.log_prob(_images(), y)


def test_labels_refused_by_an_unconditional_model_and_wrong_options():
    plain = _model()
    with pytest.raises(ValueError, match="is unconditional but got a condition y"):
        plain.log_prob(_images(), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="is unconditional"):
        plain.sample(2, y=1)
    with pytest.raises(ValueError, match="not both"):
        MRCNF((1, 4, 4), levels=2, num_classes=3, condition_dim=2)
    with pytest.raises(TypeError, match="needs num_classes"):
        MRCNF((1, 4, 4), levels=2, embedding_dim=3)
    with pytest.raises(ValueError, match="at least 2"):
        MRCNF((1, 4, 4), levels=2, num_classes=1)


def test_super_resolve_and_flow_matching_take_labels():
    model = _model(num_classes=3)
    coarse = torch.rand(2, 1, 1, 1, dtype=torch.float64)
    out = model.super_resolve(coarse, y=torch.tensor([0, 2]))
    torch.testing.assert_close(flowplug.haar_decompose(out)[0], coarse)
    with pytest.raises(ValueError, match="needs y"):
        model.super_resolve(coarse)
    model.train()
    v = _images(4)
    y = torch.tensor([0, 1, 0, 1])
    for coupling in ("independent", "ot"):
        losses = model.level_flow_matching_losses(v, y=y, coupling=coupling)
        assert len(losses) == 2 and all(torch.isfinite(term) for term in losses)
    # the label embeddings get gradients from flow matching, the coarsest level's included
    model.zero_grad()
    model.flow_matching_loss(v, y=y).backward()
    for level in model.levels:
        assert level.condition.embedding.weight.grad.abs().sum() > 0


def test_grow_and_load_levels_keep_the_condition():
    model = _model(num_classes=3)
    grown = model.grow()
    assert grown.num_classes == 3 and grown.levels[0].condition is not None
    torch.testing.assert_close(grown.levels[1].condition.embedding.weight,
                               model.levels[0].condition.embedding.weight)
    other = _model(num_classes=3)
    other.load_levels(model, [1])
    torch.testing.assert_close(other.levels[1].condition.embedding.weight, model.levels[1].condition.embedding.weight)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(y=labels(3, (1, 4)))
def test_each_image_gets_the_density_of_its_own_label_in_a_mixed_batch(y):
    model = _MIXED
    v = _images(len(y))
    with torch.no_grad():
        together = model.log_prob(v, y)
        alone = torch.cat([model.log_prob(v[i:i + 1], y[i:i + 1]) for i in range(len(y))])
    torch.testing.assert_close(together, alone, atol=1e-10, rtol=1e-10)


_MIXED = _model(num_classes=3)
