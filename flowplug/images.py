"""Integer images in memory (:class:`ImageData`) and the checks every source of them passes.

This module imports no other of flowplug's, so that the data sources (:mod:`flowplug.data`,
:mod:`flowplug.crops`) can all build on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ImageData", "check_images", "check_labels", "check_size", "resize_square"]


@dataclass(frozen=True)
class ImageData:
    """A set of integer images held in memory, with their class labels where the source has them.

    ``x``: uint8 tensor ``(N, C, H, W)`` with values in ``[0, n_bins)``; ``name``: where it came
    from (recorded in checkpoints and reports); ``y``: ``None`` or one int64 class label ``≥ 0`` per image,
    shape ``(N,)`` (an ``.npz``'s ``y``, the digits' labels, an image folder's sub-folders, torchvision's
    targets). Every part made by :meth:`first` and :meth:`split` keeps its images' labels.
    """

    x: torch.Tensor
    n_bins: int
    name: str
    origin: dict[str, object] | None = None
    """For a part made by :meth:`split`: ``{"of": name, "part": "train"|"held-out", "holdout": fraction,
    "seed": seed}``, so a checkpoint records which images it was trained on; for a part of a set that has its
    own held-out images (:func:`has_own_held_out`), ``"held_out"`` says how they were kept apart instead of
    ``"holdout"``."""
    y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_images(self.x, self.n_bins, self.name)
        if self.y is not None:
            check_labels(self.y, self.x.shape[0], self.name)

    @property
    def num_classes(self) -> int | None:
        """``max(y) + 1`` (labels are ``0 … num_classes − 1``), or ``None`` for unlabelled images."""
        return None if self.y is None else int(self.y.max()) + 1

    def labels(self) -> torch.Tensor:
        """The labels ``y``, or ``ValueError`` saying that this set has none (for a conditional model)."""
        if self.y is None:
            raise ValueError(f"{self.name} has no class labels, which a conditional model needs (an .npz "
                             "with a 'y' array, the digits, an image folder with one sub-folder per class, "
                             "or torchvision's sets carry them)")
        return self.y

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.x.shape[0]

    def info(self) -> dict[str, object]:
        """Plain description stored in checkpoints: name, ``n_bins``, image shape and size."""
        return {
            "name": self.name,
            "n_bins": self.n_bins,
            "image_shape": list(self.image_shape),
            "num_images": len(self),
            **({"split": dict(self.origin)} if self.origin is not None else {}),
        }

    def fingerprint(self) -> str:
        """The SHA-256 of the images and ``n_bins``: the same for the same images under any name or path."""
        digest = hashlib.sha256(f"{tuple(self.x.shape)}:{self.n_bins}:".encode())
        digest.update(self.x.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def first(self, n: int) -> ImageData:
        """The first ``n`` images (named ``name[:n]``), or this set itself when it holds no more than ``n``."""
        if len(self) <= n:
            return self
        return ImageData(self.x[:n], self.n_bins, f"{self.name}[:{n}]", self.origin,
                         None if self.y is None else self.y[:n])

    def split(self, holdout: float, seed: int = 0) -> tuple[ImageData, ImageData]:
        """``(train, held_out)``, ``held_out`` being a seeded random fraction ``holdout``."""
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
        n_held = max(1, round(holdout * len(self)))
        if n_held >= len(self):
            raise ValueError(f"holdout={holdout} of {len(self)} images leaves none to train on")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        held, train = order[:n_held].sort().values, order[n_held:].sort().values
        made = {"of": self.name, "of_sha256": self.fingerprint(), "holdout": holdout, "seed": seed}
        return (
            ImageData(self.x[train], self.n_bins, f"{self.name}[train]", {**made, "part": "train"},
                      None if self.y is None else self.y[train]),
            ImageData(self.x[held], self.n_bins, f"{self.name}[held-out]", {**made, "part": "held-out"},
                      None if self.y is None else self.y[held]),
        )


def check_images(x: object, n_bins: int, name: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``x`` is uint8 ``(N, C, H, W)``
    with values below ``n_bins``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: images must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"{name}: images must have dtype uint8, got {x.dtype}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(
            f"{name}: images must have shape (N, C, H, W) with N > 0, got {tuple(x.shape)}"
        )
    if not isinstance(n_bins, int) or not 2 <= n_bins <= 256:
        raise ValueError(f"{name}: n_bins must be an integer in [2, 256], got {n_bins!r}")
    top = int(x.max())
    if top >= n_bins:
        raise ValueError(f"{name}: pixel value {top} is not below n_bins={n_bins}")


def check_labels(y: object, num_images: int, name: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``y`` is an int64 tensor of ``num_images``
    class labels ``≥ 0``."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: labels y must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise TypeError(f"{name}: labels y must have dtype int64, got {y.dtype}")
    if tuple(y.shape) != (num_images,):
        raise ValueError(f"{name}: labels y must have shape ({num_images},), one per image, got {tuple(y.shape)}")
    if int(y.min()) < 0:
        raise ValueError(f"{name}: labels must be class indices >= 0, found {int(y.min())}")


def check_size(size: object) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image size must be a positive integer (pixels a side), got {size!r}")


def resize_square(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The pixels of ``image`` (uint8, ``(H, W)`` or ``(H, W, C)``) inside ``box = (left, top, right, bottom)``
    resized to ``size × size`` with pillow's Lanczos filter (antialiased when shrinking); no pixel outside
    the box enters the result."""
    from PIL import Image

    check_size(size)
    left, top, right, bottom = box
    inside = np.ascontiguousarray(image[top:bottom, left:right])
    return np.asarray(Image.fromarray(inside).resize((size, size), Image.Resampling.LANCZOS))
