"""Class labels in training and evaluation: whether a data set's labels fit a conditional model, and the labels
of the sample grids a conditional run draws.

An unconditional model ignores the labels its data carry; a label-conditional one (``num_classes=K``) needs
every image labelled ``0 … K−1``. Vector conditions (``condition_dim``) are for the Python API: images carry
class labels only, so a run with data refuses a vector-conditional model.
"""

from __future__ import annotations

import torch

from flowplug.images import ImageData
from flowplug.models.base import FlowModel

__all__ = ["check_labels_fit", "grid_labels"]


def check_labels_fit(model: FlowModel, data: ImageData) -> None:
    """``ValueError`` naming the problem unless ``data``'s labels fit ``model``: nothing to check for an
    unconditional model; a label-conditional one needs labels below its ``num_classes``."""
    if not model.is_conditional:
        return
    if model.num_classes is None:
        raise ValueError(f"{type(model).__name__} is conditioned on vectors (condition_dim={model.condition_dim}); "
                         "image data carry class labels only: build it with num_classes=... to train on labels")
    labels = data.labels()
    if data.num_classes > model.num_classes:
        raise ValueError(f"{data.name} has label {int(labels.max())} but the model has {model.num_classes} classes "
                         f"(0..{model.num_classes - 1}); build it with num_classes={data.num_classes}")


def grid_labels(model: FlowModel, num_samples: int, device: torch.device | str | None = None) -> torch.Tensor | None:
    """Labels ``0, 1, …, K−1, 0, 1, …`` for ``num_samples`` samples of a label-conditional model (a grid ``K``
    wide then shows one class per column), ``None`` for any other model."""
    if model.num_classes is None:
        return None
    return torch.arange(num_samples, device=device) % model.num_classes
