"""Datasets: the embedded digits, .npz files, image folders, held-out splits, flips and bad
input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowplug.data import ImageData, dequantize, load_dataset, load_npz, random_hflip


def test_embedded_digits():
    data = load_dataset()
    assert data.name == "digits" and data.n_bins == 17
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == torch.uint8
    assert int(data.x.max()) == 16 and int(data.x.min()) == 0


def test_split_is_disjoint_seeded_and_complete():
    data = ImageData(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), 256, "ramp")
    train, held = data.split(0.2, seed=1)
    assert len(train) == 40 and len(held) == 10
    values = sorted(train.x.flatten().tolist() + held.x.flatten().tolist())
    assert values == list(range(50))
    assert torch.equal(held.x, data.split(0.2, seed=1)[1].x)
    assert not torch.equal(held.x, data.split(0.2, seed=2)[1].x)
    with pytest.raises(ValueError, match="holdout"):
        data.split(1.5)


def test_first_keeps_the_leading_images_and_names_the_cut():
    data = ImageData(torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), 256, "ramp")
    head = data.first(3)
    assert head.x.flatten().tolist() == [0, 1, 2] and head.name == "ramp[:3]" and head.n_bins == 256
    assert data.first(5) is data and data.first(9) is data


def test_npz_round_trip(tmp_path):
    x = np.random.default_rng(0).integers(0, 4, size=(6, 3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, n_bins=4)
    data = load_dataset(tmp_path / "d.npz")
    assert data.n_bins == 4 and torch.equal(data.x, torch.from_numpy(x))
    np.savez(tmp_path / "e.npz", x=x)
    assert load_npz(tmp_path / "e.npz").n_bins == 256


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 4, 6, 3), dtype=np.uint8)
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    data = load_dataset(tmp_path)
    assert data.x.shape == (3, 3, 4, 6) and torch.equal(
        data.x, torch.from_numpy(pixels).permute(0, 3, 1, 2)
    )
    assert load_dataset(tmp_path, channels=1).x.shape == (3, 1, 4, 6)


def test_hflip_flips_about_half_and_only_mirrors():
    x = torch.arange(2 * 3, dtype=torch.uint8).view(1, 1, 2, 3).repeat(200, 1, 1, 1)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all()) and 60 < int(flipped.sum()) < 140


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: "no_such_dataset", FileNotFoundError, "unknown dataset 'no_such_dataset'"),
        (lambda p: p / "missing.npz", FileNotFoundError, "missing.npz"),
        (
            lambda p: np.savez(p / "f.npz", x=np.zeros((2, 1, 4, 4), np.float32)) or p / "f.npz",
            TypeError,
            "uint8",
        ),
        (
            lambda p: np.savez(p / "s.npz", x=np.zeros((2, 4, 4), np.uint8)) or p / "s.npz",
            ValueError,
            "N, C, H, W",
        ),
        (lambda p: np.savez(p / "k.npz", y=np.zeros(2)) or p / "k.npz", ValueError, "'x'"),
        (
            lambda p: (p / "bad.npz").write_bytes(b"not a zip") and p / "bad.npz",
            ValueError,
            "not a readable",
        ),
        (
            lambda p: np.savez(p / "hwc.npz", x=np.zeros((5, 8, 8, 3), np.uint8)) or p / "hwc.npz",
            ValueError,
            r"hwc.npz: 'x' has shape \(5, 8, 8, 3\), which looks like N×H×W×C",
        ),
        (
            lambda p: np.savez(p / "nb.npz", x=np.zeros((2, 1, 4, 4), np.uint8), n_bins=[4, 4]) or p / "nb.npz",
            ValueError,
            r"nb.npz: key 'n_bins' must hold one integer, got an array of shape \(2,\)",
        ),
        (
            lambda p: np.savez(p / "obj.npz", x=np.array([None, 1], dtype=object)) or p / "obj.npz",
            ValueError,
            r"obj.npz: key 'x' cannot be read \(Object arrays cannot be loaded",
        ),
        (lambda p: (p / "a.txt").write_text("x") and p / "a.txt", ValueError, "neither"),
        (lambda p: (p / "empty").mkdir() or p / "empty", ValueError, "no image files"),
    ],
)
def test_bad_sources(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        load_dataset(make(tmp_path))


def test_values_above_n_bins_and_wrong_types():
    with pytest.raises(ValueError, match="not below n_bins=4"):
        ImageData(torch.full((1, 1, 2, 2), 4, dtype=torch.uint8), 4, "t")
    with pytest.raises(TypeError, match="uint8"):
        ImageData(torch.zeros(1, 1, 2, 2), 4, "t")


def test_dequantize_stays_in_the_pixel_bin():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    v = dequantize(x, 256, generator=torch.Generator().manual_seed(0))
    assert v.dtype == torch.float32 and ((v >= 0) & (v < 1)).all()
    assert torch.equal(torch.floor(v * 256).to(torch.uint8), x)


def test_dequantize_never_reaches_one_in_low_precision():
    x = torch.full((1000,), 255, dtype=torch.uint8)
    v = dequantize(x, 256, dtype=torch.bfloat16)
    assert (v < 1).all()


def test_dequantize_rejects_out_of_range_levels():
    with pytest.raises(ValueError, match=r"\[0, 16\] for n_bins=17, got range \[0.0, 17.0\]"):
        dequantize(torch.tensor([0, 17]), 17)


def test_image_folder_with_size_centre_crops_images_of_any_shape(tmp_path):
    from PIL import Image

    wide = np.zeros((4, 8, 3), dtype=np.uint8)
    wide[:, 2:6] = 200  # the centred 4x4 square
    tall = np.full((12, 6), 90, dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "a.png")
    Image.fromarray(tall).save(tmp_path / "b.png")
    data = load_dataset(tmp_path, size=2)
    assert data.x.shape == (2, 3, 2, 2) and data.x.dtype == torch.uint8
    assert int(data.x[0].min()) == int(data.x[0].max()) == 200  # the border columns left out exactly
    assert int(data.x[1].min()) == int(data.x[1].max()) == 90
    assert load_dataset(tmp_path, size=5, channels=1).x.shape == (2, 1, 5, 5)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_image_folder_refuses_bad_sizes(tmp_path, size):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="image size must be a positive integer"):
        load_dataset(tmp_path, size=size)


def test_size_is_refused_for_sources_other_than_folders():
    with pytest.raises(ValueError, match="resizes the images of a folder"):
        load_dataset("digits", size=8)


def test_an_npz_with_n_bins_0_and_a_data_set_that_is_no_name_are_refused(tmp_path):
    np.savez(tmp_path / "zero.npz", x=np.zeros((4, 1, 8, 8), np.uint8), n_bins=np.array(0))
    with pytest.raises(ValueError, match=r"n_bins must be an integer in \[2, 256\], got 0"):
        load_dataset(tmp_path / "zero.npz")
    with pytest.raises(TypeError, match="a data set is a name or a path, got int 5"):
        load_dataset(5)
