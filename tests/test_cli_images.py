"""The command line on the crops datasets (their own held-out part) and on image folders resized with --size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowplug import crops
from flowplug.cli import main

TRAIN = ["train", "--recipe", "realnvp", "--steps", "2", "--batch-size", "16", "--no-progress",
         "--device", "cpu", "--threads", "1"]


def _noise_photographs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(300, 451, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope="module")
def crops_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("crops") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crops, "_photographs", _noise_photographs)
        assert main([*TRAIN, "--data", "crops8", "--out", str(out)]) == 0
    torch.set_num_threads(threads)
    return out


@pytest.fixture(autouse=True)
def noise_photographs(monkeypatch):
    """Noise photographs for the crops; torch's thread count as it was after each test (TRAIN sets it)."""
    monkeypatch.setattr(crops, "_photographs", _noise_photographs)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_training_on_crops_validates_on_their_own_held_out_part(crops_run, capsys):
    report = json.loads((crops_run / "report.json").read_text())
    assert report["data"]["name"] == "crops8" and report["data"]["num_images"] == 4000
    assert report["held_out"]["num_images"] == 200
    checkpoint = str(sorted((crops_run / "checkpoints").glob("step-*.pt"))[-1])
    capsys.readouterr()
    assert main(["evaluate", checkpoint, "--data", "crops8", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == "crops8[held-out]" and result["num_images"] == 200


@pytest.mark.parametrize(("args", "match"), [
    (["--holdout", "0.2"], "crops8 has its own held-out images.*--holdout"),
    (["--seed", "1"], r"--seed\) choose a split"),
    (["--split", "all"], r"choose the split \(--split\) held-out or train"),
    (["--size", "8"], "resizes the images of a folder"),
])
def test_evaluate_refuses_splits_of_the_crops(crops_run, args, match, capsys):
    checkpoint = str(sorted((crops_run / "checkpoints").glob("step-*.pt"))[-1])
    assert main(["evaluate", checkpoint, "--data", "crops8", "--device", "cpu", *args]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match=match):
        main(["--debug", "evaluate", checkpoint, "--data", "crops8", "--device", "cpu", *args])


def test_train_refuses_a_holdout_for_the_crops(tmp_path):
    with pytest.raises(ValueError, match=r"--holdout\) choose a split"):
        main(["--debug", *TRAIN, "--data", "crops8", "--holdout", "0.1", "--out", str(tmp_path / "r")])


def test_train_and_evaluate_a_folder_of_mixed_sizes_with_size(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        height, width = (12, 20) if i % 2 else (30, 16)
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    assert main([*TRAIN, "--data", str(folder), "--size", "8", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["data"]["image_shape"] == [3, 8, 8]
    checkpoint = str(sorted((out / "checkpoints").glob("step-*.pt"))[-1])
    capsys.readouterr()
    assert main(["evaluate", checkpoint, "--data", str(folder), "--size", "8", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 4
    assert main(["train", "--data", str(folder), "--size", "0"]) == 2
    assert "image size must be a positive integer" in capsys.readouterr().err


def test_a_folder_of_grey_images_trains_and_evaluates_in_grey_with_channels_1(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "grey"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8), mode="L").save(folder / f"{i:02d}.png")
    out = tmp_path / "run"
    assert main([*TRAIN, "--data", str(folder), "--channels", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["image_shape"] == [1, 8, 8]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(folder), "--channels", "1", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 4


def test_resume_and_evaluate_without_data_use_the_folder_the_run_was_trained_on(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "wide"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):  # 12x10 grey images, read at --size 8 in grey: both must come back on a resume
        Image.fromarray(rng.integers(0, 256, size=(10, 12), dtype=np.uint8), mode="L").save(folder / f"{i:02d}.png")
    out = tmp_path / "run"
    assert main([*TRAIN, "--data", str(folder), "--channels", "1", "--size", "8", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--data", str(folder), "--channels", "1", "--size", "8",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == scored and scored["num_images"] == 4
    assert main([*TRAIN, "--steps", "3", "--out", str(out), "--resume"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["image_shape"] == [1, 8, 8] and config["data"]["split"]["of"] == str(folder)
    assert json.loads((out / "report.json").read_text())["steps"] == 3
