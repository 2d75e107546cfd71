"""Property assertions for conditional flow models (a :class:`flowplug.FlowModel` with ``num_classes`` or
``condition_dim``, e.g. ``MRCNF(..., num_classes=10)`` or ``Glow(..., num_classes=10)``); torch only.

A conditional model with its condition fixed is an ordinary bijection between images and latents, so the
flow assertions of :mod:`flowplug.testing.assertions` apply to :func:`conditioned` ``(model, y)``: the model
seen as a flow for the labels ``y``. :func:`assert_conditional_flow` runs them for every class (invertibility
and log-determinant against the brute-force Jacobian), :func:`assert_conditional_sampling` checks that
``log q`` of conditional samples equals ``log p(x | y)`` for every class, and :func:`assert_condition_matters`
that the condition changes the density at all (a model that ignores its labels passes the others).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from normflows.flows import Flow

from flowplug.testing.assertions import (
    assert_invertible,
    assert_log_det_correct,
    assert_sample_log_prob_consistent,
)

__all__ = [
    "ConditionedModel",
    "assert_condition_matters",
    "assert_conditional_flow",
    "assert_conditional_sampling",
    "class_labels",
    "conditioned",
]


class ConditionedModel(Flow):
    """``model`` as a flow given the condition ``y``: ``inverse(v)`` is ``model.inverse_and_log_det(v, y)``
    (images → latents) and ``forward(z)`` is ``model.forward_and_log_det(z, y)``, as normflows' convention has
    them (docs/design.md §2). ``y`` must hold one condition per image of the batches passed."""

    def __init__(self, model: Any, y: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.y = y

    def forward(self, z: Any) -> tuple[Any, torch.Tensor]:
        return self.model.forward_and_log_det(z, y=self.y)

    def inverse(self, x: Any) -> tuple[Any, torch.Tensor]:
        return self.model.inverse_and_log_det(x, y=self.y)


def conditioned(model: Any, y: torch.Tensor) -> ConditionedModel:
    """The flow of ``model`` given ``y`` (:class:`ConditionedModel`)."""
    if not getattr(model, "is_conditional", False):
        raise TypeError(f"{type(model).__name__} is not a conditional model (no num_classes or condition_dim)")
    return ConditionedModel(model, y)


def class_labels(model: Any, label: int, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``batch_size`` copies of class ``label`` for a label-conditional ``model`` (``ValueError`` if out of
    range)."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"{type(model).__name__} is not conditioned on class labels (num_classes is None)")
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is out of range; the model has classes 0..{num_classes - 1}")
    return torch.full((batch_size,), label, dtype=torch.int64, device=device)


def _labels_to_check(model: Any, labels: Iterable[int] | None) -> list[int]:
    if getattr(model, "num_classes", None) is None:
        raise TypeError(f"{type(model).__name__} is not conditioned on class labels (num_classes is None)")
    return list(range(model.num_classes) if labels is None else labels)


def assert_conditional_flow(
    model: Any,
    v: torch.Tensor,
    labels: Iterable[int] | None = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    log_det: bool = True,
    max_dims: int = 512,
) -> None:
    """For every class (``labels``, default all), assert that the model given that class is invertible on the
    images ``v`` (both round trips, log-dets cancel: :func:`~flowplug.testing.assert_invertible`) and, with
    ``log_det``, that its log-determinant equals that of the brute-force autograd Jacobian in both directions
    (:func:`~flowplug.testing.assert_log_det_correct`; keep ``v`` tiny and use float64, an exact trace and
    tight solver tolerances). The failure names the class."""
    for label in _labels_to_check(model, labels):
        flow = conditioned(model, class_labels(model, label, v.shape[0], v.device))
        try:
            assert_invertible(flow, v, atol=atol, rtol=rtol, warm_up=False)
            if log_det:
                assert_log_det_correct(flow, v, atol=atol, rtol=rtol, warm_up=False, max_dims=max_dims)
        except AssertionError as error:
            raise AssertionError(f"given class {label}: {error}") from None


def assert_conditional_sampling(
    model: Any,
    num_samples: int = 4,
    labels: Iterable[int] | None = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """For every class (``labels``, default all), assert that ``model.sample(n, y=class)`` returns
    ``log q(x | y) == model.log_prob(x, y)`` for each sample
    (:func:`~flowplug.testing.assert_sample_log_prob_consistent`)."""
    device = next(model.parameters()).device
    for label in _labels_to_check(model, labels):
        y = class_labels(model, label, num_samples, device)
        try:
            assert_sample_log_prob_consistent(model, num_samples, context=y, atol=atol, rtol=rtol)
        except AssertionError as error:
            raise AssertionError(f"given class {label}: {error}") from None


def assert_condition_matters(model: Any, v: torch.Tensor, *, min_difference: float = 1e-6) -> None:
    """Assert that ``log p(v | y)`` differs between the first two classes by more than ``min_difference`` for
    some image of ``v`` (a conditional model that ignores its labels would pass every other check)."""
    with torch.no_grad():
        first = model.log_prob(v, class_labels(model, 0, v.shape[0], v.device))
        second = model.log_prob(v, class_labels(model, 1, v.shape[0], v.device))
    difference = float((first - second).abs().max())
    if not difference > min_difference:
        raise AssertionError(f"log p(v | y) is the same for classes 0 and 1 (largest difference {difference:.3g}); "
                             "the model ignores its condition")
