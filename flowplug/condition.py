"""What a conditional model is conditioned on, checked at its entry points, and how a level turns it into context.

A conditional model (:attr:`flowplug.FlowModel.is_conditional`) takes a condition ``y`` with every image: a
**class label** (``num_classes=K``: int64 labels ``0 … K−1``, shape ``(B,)``) or a **given vector**
(``condition_dim=k``: floating ``(B, k)`` in the images' dtype). :func:`check_condition` is the one check of
``y`` (shape, dtype, range, presence), run once per public call. :class:`ConditionEncoder` maps a checked ``y``
to features ``(B, E)``: a learned embedding of the label (``E = embedding_dim``) or the vector itself
(``E = k``, no parameters); :func:`spatial_features` lays them out as ``E`` constant channels of an image, the
form in which an MRCNF level joins them to its context (``docs/conditional.md``).
"""

from __future__ import annotations

import torch
from torch import nn

from flowplug._checks import check_positive_integers

__all__ = ["DEFAULT_EMBEDDING_DIM", "ConditionEncoder", "check_condition", "check_condition_options",
           "spatial_features"]

DEFAULT_EMBEDDING_DIM = 16
"""Width of a label's learned embedding when ``embedding_dim`` is not given."""


def check_condition_options(
    num_classes: int | None, condition_dim: int | None, embedding_dim: int | None
) -> None:
    """``ValueError``/``TypeError`` unless at most one of ``num_classes`` (a label, ≥ 2 classes) and
    ``condition_dim`` (a vector) is given, and ``embedding_dim`` only with ``num_classes``."""
    if num_classes is not None and condition_dim is not None:
        raise ValueError("give num_classes (class labels) or condition_dim (a vector), not both")
    if num_classes is not None:
        check_positive_integers(num_classes=num_classes)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (one class is no condition), got {num_classes}")
    if condition_dim is not None:
        check_positive_integers(condition_dim=condition_dim)
    if embedding_dim is not None:
        if num_classes is None:
            raise TypeError("embedding_dim sets the width of a label's embedding; it needs num_classes")
        check_positive_integers(embedding_dim=embedding_dim)


def check_condition(
    y: object,
    *,
    num_classes: int | None,
    condition_dim: int | None,
    batch_size: int,
    like: torch.Tensor,
    owner: str,
) -> torch.Tensor | None:
    """``y`` checked for a model ``owner`` with ``num_classes`` / ``condition_dim`` (both ``None``: unconditional)
    and a batch of ``batch_size`` inputs like ``like`` (dtype, device); returns ``y`` (``None`` for an
    unconditional model). Raises ``ValueError``/``TypeError`` naming the problem: labels given to an
    unconditional model, missing for a conditional one, of the wrong shape, dtype, device, or out of range."""
    if num_classes is None and condition_dim is None:
        if y is not None:
            raise ValueError(f"{owner} is unconditional but got a condition y; build it with num_classes=... "
                             "(class labels) or condition_dim=... (a vector) to condition on one")
        return None
    what = (f"class labels (int64 of shape (B,) = ({batch_size},), values 0..{num_classes - 1})"
            if num_classes is not None else
            f"a condition vector per input (floating, shape (B, {condition_dim}) = ({batch_size}, {condition_dim}))")
    if y is None:
        raise ValueError(f"{owner} is conditional and needs y: {what}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{owner}: y must be a torch.Tensor of {what}, got {type(y).__name__}")
    if y.device != like.device:
        raise ValueError(f"{owner}: y is on {y.device} but the inputs are on {like.device}")
    if num_classes is not None:
        if y.dtype != torch.int64:
            raise TypeError(f"{owner}: y must hold {what}; got dtype {y.dtype}")
        if tuple(y.shape) != (batch_size,):
            raise ValueError(f"{owner}: y must hold {what}; got shape {tuple(y.shape)}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"{owner}: label {bad} is out of range; this model has classes 0..{num_classes - 1}")
        return y
    if not y.is_floating_point():
        raise TypeError(f"{owner}: y must hold {what}; got dtype {y.dtype}")
    if tuple(y.shape) != (batch_size, condition_dim):
        raise ValueError(f"{owner}: y must hold {what}; got shape {tuple(y.shape)}")
    if y.dtype != like.dtype:
        raise TypeError(f"{owner}: y is {y.dtype} but the inputs are {like.dtype}; convert y (y.to({like.dtype}))")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{owner}: y holds non-finite values")
    return y


class ConditionEncoder(nn.Module):
    """Features ``(B, features)`` of a checked condition: a learned ``nn.Embedding(num_classes, embedding_dim)``
    of class labels, or (``condition_dim``) the given vectors themselves.

    ``null_class`` adds one more embedding row, label ``num_classes``: the "no label" of classifier-free
    guidance, which training substitutes for some labels (``MRCNF(label_dropout=...)``) and guided sampling
    contrasts with the label (:mod:`flowplug.cnf.guidance`). Users never pass it: :func:`check_condition` refuses
    labels outside ``0 … num_classes − 1``; :meth:`null_labels` makes them."""

    def __init__(
        self, num_classes: int | None = None, condition_dim: int | None = None, embedding_dim: int | None = None,
        null_class: bool = False,
    ) -> None:
        super().__init__()
        check_condition_options(num_classes, condition_dim, embedding_dim)
        if num_classes is None and condition_dim is None:
            raise ValueError("a ConditionEncoder needs num_classes or condition_dim")
        if null_class and num_classes is None:
            raise ValueError("a null class is a label; it needs num_classes")
        self.null_label = num_classes if null_class else None
        self.embedding: nn.Embedding | None = None
        if num_classes is not None:
            self.embedding = nn.Embedding(num_classes + int(null_class), embedding_dim or DEFAULT_EMBEDDING_DIM)
            self.features = self.embedding.embedding_dim
        else:
            self.features = int(condition_dim)  # type: ignore[arg-type]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.embedding is None else self.embedding(y)

    def null_labels(self, like: torch.Tensor) -> torch.Tensor:
        """The null label for every row of the labels ``like``; ``ValueError`` without a null class."""
        if self.null_label is None:
            raise ValueError("this encoder has no null class (build the model with label_dropout > 0)")
        return torch.full_like(like, self.null_label)


def spatial_features(features: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, E)`` features as ``E`` constant channels ``(B, E, height, width)`` of ``dtype``."""
    return features.to(dtype)[:, :, None, None].expand(-1, -1, height, width)
