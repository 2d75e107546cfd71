"""The offline crops datasets: shapes, determinism, held-out regions disjoint from training ones, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowplug import crops
from flowplug.crops import HELD_OUT_FROM, MAX_CROP_SIZE, crops_size, sample_crops
from flowplug.data import has_own_held_out, load_dataset


def _marked_photographs() -> list[np.ndarray]:
    """Photographs of the sources' shapes, 0 in every training column and 255 in every held-out column."""
    photos = []
    for height, width in ((512, 512), (300, 451), (400, 600), (872, 1000), (427, 640)):
        photo = np.zeros((height, width, 3), dtype=np.uint8)
        photo[:, int(np.floor(HELD_OUT_FROM * width)):] = 255
        photos.append(photo)
    return photos


@pytest.mark.parametrize("size", [4, MAX_CROP_SIZE])
def test_training_and_held_out_crops_come_from_disjoint_regions(monkeypatch, size):
    monkeypatch.setattr(crops, "_photographs", _marked_photographs)
    train = sample_crops(size, num=40, seed=3)
    held = sample_crops(size, part="held-out", num=40, seed=3)
    assert int(train.x.max()) == 0 and int(held.x.min()) == 255


def test_crops_shape_dtype_names_and_origin(monkeypatch):
    monkeypatch.setattr(crops, "_photographs", _marked_photographs)
    train, held = load_dataset("crops8"), load_dataset("crops8", train=False)
    assert train.x.shape == (4000, 3, 8, 8) and held.x.shape == (200, 3, 8, 8)
    assert train.x.dtype == torch.uint8 and train.n_bins == 256
    assert (train.name, held.name) == ("crops8", "crops8[held-out]")
    assert held.info()["split"] == {"of": "crops8", "part": "held-out", "seed": 0,
                                    "held_out": "disjoint image regions"}


def test_crops_of_the_bundled_photographs_are_seeded():
    pytest.importorskip("skimage")
    first = sample_crops(6, num=12, seed=1)
    assert first.x.shape == (12, 3, 6, 6)
    assert torch.equal(first.x, sample_crops(6, num=12, seed=1).x)
    assert not torch.equal(first.x, sample_crops(6, num=12, seed=2).x)
    assert not torch.equal(first.x, sample_crops(6, part="held-out", num=12, seed=1).x)
    assert first.x.float().std() > 10  # photographs, not a constant


def test_crops_names():
    assert crops_size("crops64") == 64 and crops_size("crops") is None and crops_size("crops6x") is None
    assert has_own_held_out("crops128") and not has_own_held_out("digits")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"size": 0}, "crop size"),
    ({"size": MAX_CROP_SIZE + 1}, "crop size"),
    ({"size": 8.0}, "crop size"),
    ({"size": 8, "part": "test"}, "part"),
    ({"size": 8, "num": 0}, "num"),
])
def test_bad_crop_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_crops(**kwargs)


def test_a_missing_scikit_image_is_named(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ValueError, match=r"flowplug\[images\]"):
        sample_crops(8, num=1)
