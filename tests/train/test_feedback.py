"""What a run leaves behind: readable sample grids, a report without empty lines, a notice for TensorBoard, a
metrics file that a resume rewrites safely."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import tiny_glow

from flowplug.train import TrainConfig, Trainer, feedback
from flowplug.train.feedback import MetricsLogger, save_image_grid, write_report
from flowplug.train.run_folder import RunFolder


def test_grids_are_upscaled_by_nearest_neighbour_to_256_pixels(tmp_path):
    v = torch.rand(4, 1, 8, 8)
    save_image_grid(v, tmp_path / "g.png")
    pixels = np.asarray(Image.open(tmp_path / "g.png"))
    assert pixels.shape == (19 * 14, 19 * 14)  # 2x2 images of 8 + 3 pixels of padding, zoomed 14x to >= 256
    first = pixels[14:14 * 9, 14:14 * 9]  # the first image: each pixel a sharp 14x14 square
    assert (first == np.kron(first[::14, ::14], np.ones((14, 14), np.uint8))).all()
    save_image_grid(v, str(tmp_path / "z.png"), zoom=1)
    assert Image.open(tmp_path / "z.png").size == (19, 19)
    with pytest.raises(ValueError, match="zoom must be a positive integer, got 0"):
        save_image_grid(v, tmp_path / "bad.png", zoom=0)


def test_sample_grids_name_their_temperature(tmp_path):
    assert RunFolder(tmp_path).samples(500, 0.8).name == "step-00000500-t0.8.png"


def test_report_txt_omits_missing_values_and_explains_per_level_bpd(tmp_path):
    report = {"final_train_bpd": None, "steps": 3, "data": {"n_bins": 17},
              "held_out": {"bpd": 2.9, "per_level_bpd": [-1.0, -0.5, 0.31], "nfe": None}}
    write_report(report, RunFolder(tmp_path))
    text = (tmp_path / "report.txt").read_text()
    assert "None" not in text and "final_train_bpd" not in text and "nfe" not in text
    note = [line for line in text.splitlines() if line.strip().startswith("(per_level_bpd")]
    assert len(note) == 1 and f"log2(n_bins) = {math.log2(17):.4f}" in note[0] and "negative" in note[0]
    assert json.loads((tmp_path / "report.json").read_text()) == report  # the JSON keeps every key


@pytest.fixture
def no_tensorboard(monkeypatch):
    """The tensorboard package looks absent (whether or not it is installed here)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(feedback.importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))


def test_tensorboard_requested_but_missing_says_so_once(tmp_path, capsys, no_tensorboard):
    logger = MetricsLogger(RunFolder(tmp_path), tensorboard=True)
    assert not logger.tensorboard and not (tmp_path / "tensorboard").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "tensorboard package is not installed" in err[0]
    MetricsLogger(RunFolder(tmp_path / "off"), tensorboard=False)
    assert capsys.readouterr().err == ""


def test_tensorboard_by_default_only_when_installed_and_silently(tmp_path, capsys, no_tensorboard):
    logger = MetricsLogger(RunFolder(tmp_path))  # None: when installed, no warning when not
    assert logger.tensorboard is False and not (tmp_path / "tensorboard").exists()
    assert capsys.readouterr().err == ""
    assert TrainConfig(steps=1).tensorboard is None


def test_config_json_does_not_claim_tensorboard_it_could_not_write(tiny_data, tmp_path, capsys, no_tensorboard):
    config = TrainConfig(steps=1, batch_size=16, progress=False, tensorboard=True)
    Trainer(tiny_glow(), config, out_dir=tmp_path, device="cpu").fit(tiny_data)
    assert json.loads((tmp_path / "config.json").read_text())["trainer"]["tensorboard"] is False
    assert "tensorboard package is not installed" in capsys.readouterr().err


def test_a_default_run_without_tensorboard_does_not_warn(tiny_data, tmp_path, capsys, no_tensorboard):
    config = TrainConfig(steps=1, batch_size=16, progress=False)
    Trainer(tiny_glow(), config, out_dir=tmp_path, device="cpu").fit(tiny_data)
    assert json.loads((tmp_path / "config.json").read_text())["trainer"]["tensorboard"] is False
    assert "tensorboard" not in capsys.readouterr().err


_ROWS = "".join(f"{step},{step / 10:.3f},train,loss,{1 / step!r}\n" for step in range(1, 6))


def test_a_resume_drops_later_blank_and_broken_rows_of_metrics_csv(tmp_path):
    folder = RunFolder(tmp_path)
    folder.metrics.write_text("step,elapsed_s,split,metric,value\n" + _ROWS[:-1].replace("\n3,", "\n\n3,")
                              + "\n6,0.6,tra")  # a blank line, and a row cut by a kill
    MetricsLogger(folder, tensorboard=False, after_step=3).log(4, 0.45, "train", {"loss": 0.2})
    lines = folder.metrics.read_text().splitlines()
    assert lines == ["step,elapsed_s,split,metric,value", "1,0.100,train,loss,1.0", "2,0.200,train,loss,0.5",
                     "3,0.300,train,loss,0.3333333333333333", "4,0.450,train,loss,0.2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no temporary file left


def test_the_rewrite_of_metrics_csv_is_atomic(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    before = "step,elapsed_s,split,metric,value\n" + _ROWS
    folder.metrics.write_text(before)

    def killed(*args):
        raise KeyboardInterrupt  # the process stops between writing the new file and renaming it

    monkeypatch.setattr(feedback.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricsLogger(folder, tensorboard=False, after_step=2)
    assert folder.metrics.read_text() == before
    monkeypatch.undo()
    MetricsLogger(folder, tensorboard=False, after_step=2)
    assert len(folder.metrics.read_text().splitlines()) == 3


def test_a_grid_of_no_images_or_of_non_finite_values_is_refused_and_nothing_written(tmp_path):
    from flowplug.train.feedback import save_image_grid

    with pytest.raises(ValueError, match="N > 0"):
        save_image_grid(torch.zeros(0, 1, 4, 4), tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"1 pixel value\(s\) of the images are not finite"):
        save_image_grid(torch.zeros(2, 1, 4, 4).index_put_((torch.tensor([0]),) * 4, torch.tensor(float("nan"))),
                        tmp_path / "nan.png")
    assert not list(tmp_path.iterdir())


def test_samples_with_non_finite_pixels_are_left_out_of_the_grid_and_said(tmp_path, capsys):
    v = torch.rand(4, 1, 4, 4)
    v[1, 0, 0, 0] = float("inf")
    feedback.save_samples(v, tmp_path / "grid.png", zoom=1)
    assert "1 of 4 samples have non-finite pixels and are left out" in capsys.readouterr().err
    assert Image.open(tmp_path / "grid.png").size == (2 * 5 + 1, 2 * 5 + 1)  # three images: a 2x2 grid
    feedback.save_samples(torch.full((2, 1, 4, 4), float("nan")), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_a_run_whose_final_samples_are_not_finite_still_writes_its_report(tiny_data, tmp_path, monkeypatch):
    trainer = Trainer(tiny_glow(), TrainConfig(steps=2, batch_size=8, progress=False), out_dir=tmp_path,
                      device="cpu")
    monkeypatch.setattr(trainer, "sample", lambda n, t=None: torch.full((n, *tiny_data.image_shape), float("nan")))
    trainer.fit(tiny_data, tiny_data)
    assert json.loads((tmp_path / "report.json").read_text())["steps"] == 2
    assert not list(tmp_path.glob("samples/*.png"))
