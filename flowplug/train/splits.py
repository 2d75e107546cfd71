"""Which images a run trains on and which it scores as held out, decided once for the CLI and Python alike.

A data set with its own held-out part (``crops<SIZE>``) trains on its training part and is scored on the other;
any other set is split by :meth:`~flowplug.data.ImageData.split` (a seeded random fraction held out), and the
checkpoint records that split, with a fingerprint of the images it was taken from. Scoring a checkpoint later
(:func:`evaluation_split`) takes its own held-out images by default and refuses any split that would score
images it was trained on as held out — judged by the images' fingerprint, not by the data set's name or path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowplug.data import ImageData, has_own_held_out, load_dataset
from flowplug.train.checkpoint import Checkpoint

__all__ = ["DEFAULT_HOLDOUT", "SPLITS", "RecordedData", "evaluation_split", "training_split"]

DEFAULT_HOLDOUT = 0.1
SPLITS = ("held-out", "train", "all", "test")
_SEPARATE_TEST_SETS = ("cifar10", "mnist")
"""Data sets whose ``test`` split is a separate set; for the others it is the training data itself."""


def _check_split_options(name: str, holdout: float | None, seed: int | None) -> bool:
    """Whether ``name`` has its own held-out images; then ``holdout`` and ``seed``, which choose a split of the
    training images, must not be given."""
    if not has_own_held_out(name):
        return False
    given = [f"{flag} (--{flag})" for flag, value in (("holdout", holdout), ("seed", seed)) if value is not None]
    if given:
        raise ValueError(f"{name} has its own held-out images (load_dataset(..., train=False)); "
                         f"{' and '.join(given)} choose a split of the training images and do not apply")
    return True


@dataclass(frozen=True)
class RecordedData:
    """The data set a run was trained on, as its record (``config.json``'s or a checkpoint's ``data``) names it:
    the name or path :func:`~flowplug.data.load_dataset` loads (``source``), and for an image folder the
    ``channels`` and ``size`` it was loaded with (``None`` otherwise). A torchvision set's data folder is not
    recorded (it is where the files are, not which images)."""

    source: str
    channels: int | None = None
    size: int | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> RecordedData:
        """The record's data set; ``KeyError``/``TypeError``/``ValueError`` for a record without its name or
        image shape."""
        source = str((data.get("split") or {}).get("of") or data["name"])
        channels, height, width = data["image_shape"]
        if not Path(source).is_dir():
            return cls(source)
        # a folder of square images loaded at their own size is the same with --size: resizing to it is a copy
        return cls(source, int(channels), int(height) if height == width else None)

    def load(self, root: str | None = None) -> ImageData:
        """The recorded data set's training images (``root``: torchvision's data folder)."""
        return load_dataset(self.source, root=root, size=self.size, channels=self.channels or 3)


def training_split(name: str, data: ImageData, *, holdout: float | None = None, seed: int = 0,
                   ) -> tuple[ImageData, ImageData]:
    """``(train, held_out)`` of data set ``name`` (loaded as ``data``): its own parts, or a ``holdout`` fraction
    (default :data:`DEFAULT_HOLDOUT`) held out at random by ``seed``."""
    if _check_split_options(name, holdout, None):
        return data, load_dataset(name, train=False)
    if holdout is not None and (isinstance(holdout, bool) or not 0 < holdout < 1):
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    return data.split(DEFAULT_HOLDOUT if holdout is None else holdout, seed=seed)


def evaluation_split(checkpoint: Checkpoint, name: str | None = None, split: str = "held-out", *,
                     holdout: float | None = None, seed: int | None = None, root: str | None = None,
                     size: int | None = None, channels: int | None = None) -> ImageData:
    """The ``split`` (one of :data:`SPLITS`) of data set ``name`` to score ``checkpoint`` on; ``name=None`` is the
    data set the checkpoint was trained on (:class:`RecordedData`: its path, and an image folder's channels and
    size unless ``channels``/``size`` are given).

    ``held-out`` is the checkpoint's own held-out images (``train`` its training images) when ``name`` holds the
    images it was trained on; ``holdout`` and ``seed`` may only repeat the checkpoint's. For data with their own
    held-out part, ``held-out`` and ``test`` are that part. A split holding images the checkpoint was trained on
    as held out (``all``, or ``test`` of a set whose test split is its training data) is refused, as are images of
    another shape or ``n_bins`` than the model's. ``root``, ``size`` and ``channels`` (default 3) are
    :func:`~flowplug.data.load_dataset`'s.
    """
    if name is None:
        recorded = RecordedData.of(checkpoint.data)
        name, size, channels = recorded.source, size or recorded.size, channels or recorded.channels
    channels = channels or 3
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if _check_split_options(name, holdout, seed):
        if split == "all":
            raise ValueError(f"{name} has a training and a held-out part; choose the split (--split) held-out or "
                             "train")
        return _matching(load_dataset(name, train=split == "train", size=size), checkpoint)
    data = load_dataset(name, root=root, train=split != "test", size=size, channels=channels)
    trained = checkpoint.data.get("split")
    same = trained is not None and _same_images(trained, data)
    if split in ("held-out", "train"):
        stored = trained if same else {"holdout": DEFAULT_HOLDOUT, "seed": 0}
        chosen = (stored["holdout"] if holdout is None else holdout, stored["seed"] if seed is None else seed)
        if same and chosen != (trained["holdout"], trained["seed"]):
            raise ValueError(f"the checkpoint was trained on {data.name} with holdout {trained['holdout']} and "
                             f"seed {trained['seed']}; another split would score its training images as held out "
                             "(leave holdout and seed out to use its own)")
        data = data.split(chosen[0], seed=chosen[1])[split == "held-out"]
    elif same and (split == "all" or data.name not in _SEPARATE_TEST_SETS):
        raise ValueError(f"the split {split} of {data.name} includes the images the checkpoint was trained on; "
                         "use the split held-out (its own held-out images)")
    return _matching(data, checkpoint)


def _same_images(trained: dict[str, Any], data: ImageData) -> bool:
    """Whether ``data`` holds the images the checkpoint's split was made of: by fingerprint where the checkpoint
    has one, by name for checkpoints of versions that recorded none."""
    if "of_sha256" in trained:
        return trained["of_sha256"] == data.fingerprint()
    return trained.get("of") == data.name


def _matching(data: ImageData, checkpoint: Checkpoint) -> ImageData:
    """``data``, after checking that its images have the shape and ``n_bins`` of the checkpoint's model."""
    expected = tuple(checkpoint.data["image_shape"]), checkpoint.data["n_bins"]
    if (data.image_shape, data.n_bins) != expected:
        raise ValueError(f"the checkpoint's model is for images {expected[0]} with n_bins={expected[1]}; "
                         f"{data.name} has {data.image_shape}, n_bins={data.n_bins}")
    return data
