"""`flowplug train --conditional`, `sample --label`, a per-class grid, conditional `evaluate` (issue 27)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from flowplug.cli import main
from flowplug.train import load_checkpoint

SMALL = ('{"hidden_channels": 8, "num_blocks": 1, "eval_solver": {"method": "rk4", "steps": 1}, '
         '"label_dropout": 0.1}')


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("conditional")
    assert main(["train", "--recipe", "mrcnf", "--conditional", "--steps", "1", "--batch-size", "16",
                 "--no-progress", "--model-options", SMALL, "--out", str(out)]) == 0
    return out


def test_train_conditional_records_the_classes(conditional_run):
    checkpoint = load_checkpoint(conditional_run / "checkpoints" / "best.pt")
    assert checkpoint.model_config["num_classes"] == 10  # the digits' labels
    assert checkpoint.model_config["label_dropout"] == 0.1
    report = json.loads((conditional_run / "report.json").read_text())
    assert report["held_out"]["conditional"] is True


def test_sample_a_label_or_a_grid_per_class_and_evaluate(conditional_run, tmp_path, capsys):
    checkpoint = str(conditional_run / "checkpoints" / "best.pt")
    assert main(["sample", checkpoint, "--label", "3", "--num", "4", "--steps", "1", "--zoom", "1",
                 "--out", str(tmp_path / "three.png")]) == 0
    assert "of class 3" in capsys.readouterr().out
    assert main(["sample", checkpoint, "--num", "20", "--steps", "1", "--zoom", "1",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert "one class per column (0..9)" in capsys.readouterr().out
    with Image.open(tmp_path / "grid.png") as grid:  # 10 columns of 8-pixel digits with 1-pixel gaps
        assert grid.size == (10 * 9 + 1, 2 * 9 + 1)
    assert main(["sample", checkpoint, "--label", "10", "--steps", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "label 10 is out of range" in capsys.readouterr().err
    assert main(["evaluate", checkpoint, "--steps", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["conditional"] is True


def test_sample_with_classifier_free_guidance(conditional_run, capsys):
    checkpoint = str(conditional_run / "checkpoints" / "best.pt")
    assert main(["sample", checkpoint, "--label", "3", "--num", "4", "--steps", "1", "--guidance", "2"]) == 0
    assert "guidance 2" in capsys.readouterr().out
    assert (conditional_run / "samples" / "best-t1-g2.png").stat().st_size > 0  # beside the unguided grids
    assert main(["sample", checkpoint, "--guidance", "nan", "--steps", "1"]) == 2
    assert "--guidance must be a finite number" in capsys.readouterr().err


def test_conditional_glow_and_refusals(tmp_path, capsys):
    out = tmp_path / "glow"
    assert main(["train", "--recipe", "glow", "--conditional", "--steps", "1", "--batch-size", "16",
                 "--no-progress", "--model-options", '{"hidden_channels": 8, "depth": 1}', "--out", str(out)]) == 0
    checkpoint = str(out / "checkpoints" / "best.pt")
    assert load_checkpoint(checkpoint).model_config["num_classes"] == 10
    capsys.readouterr()
    plain = tmp_path / "plain"
    assert main(["train", "--recipe", "glow", "--steps", "1", "--batch-size", "16", "--no-progress",
                 "--model-options", '{"hidden_channels": 8, "depth": 1}', "--out", str(plain)]) == 0
    assert main(["sample", str(plain / "checkpoints" / "best.pt"), "--label", "1",
                 "--out", str(tmp_path / "p.png")]) == 2
    assert "--label needs a class-conditional model" in capsys.readouterr().err
    assert main(["sample", checkpoint, "--label", "1", "--guidance", "1", "--out", str(tmp_path / "g.png")]) == 2
    assert "--guidance needs a class-conditional MRCNF trained with label_dropout" in capsys.readouterr().err
    assert main(["train", "--recipe", "glow", "--conditional", "--resume", "--steps", "2", "--out", str(out)]) == 2
    assert "keeps its own model" in capsys.readouterr().err



def test_ood_scores_refuse_a_conditional_model(conditional_run):
    from flowplug.data import load_dataset
    from flowplug.ood import score_images
    from flowplug.train import Trainer

    trainer = Trainer.restore(load_checkpoint(conditional_run / "checkpoints" / "best.pt"), device="cpu")
    with pytest.raises(ValueError, match="not defined for conditional models"):
        score_images(trainer.eval_model(), load_dataset("digits").first(4))
