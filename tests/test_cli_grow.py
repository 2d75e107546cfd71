"""``flowplug train --grow-from``: a tiny 4×4 → 8×8 growth end to end, its parent record through --resume, the
old-levels choice, the new level's net options, and the errors for what cannot grow."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from flowplug.cli import main
from flowplug.train import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SOLVER = {"method": "rk4", "step_size": 1.0}
TINY = {"model": {"type": "mrcnf", "levels": 2, "net": "res_odenet",
                  "net_options": [{"hidden_channels": 6, "num_blocks": 1}, {"hidden_channels": 4}],
                  "divergence": "exact", "train_solver": SOLVER, "eval_solver": SOLVER},
        "train": {"objective": "flow_matching", "steps": 2, "batch_size": 16, "eval_every": 2}}
FLAGS = ["--no-progress", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """8×8 images with 4 levels, their 4×4 block means, and a parent run trained 2 steps on the 4×4 ones."""
    root = tmp_path_factory.mktemp("grow")
    rng = np.random.default_rng(0)
    big = np.clip(np.linspace(0, 3, 8)[None, None, None] + rng.normal(0, 0.7, (60, 1, 8, 8)), 0, 3).round()
    small = np.floor(big.reshape(60, 1, 4, 2, 4, 2).mean((3, 5)) + 0.5)
    for name, x in (("big", big), ("small", small)):
        np.savez(root / f"{name}.npz", x=x.astype(np.uint8), n_bins=np.array(4))
    (root / "tiny.json").write_text(json.dumps(TINY))
    parent = root / "parent"
    assert main(["train", "--config", str(root / "tiny.json"), "--data", str(root / "small.npz"),
                 "--out", str(parent), *FLAGS]) == 0
    return root


def grow(folders, out, *extra):
    return main(["train", "--grow-from", str(folders / "parent"), "--data", str(folders / "big.npz"),
                 "--steps", "2", "--out", str(out), *FLAGS, *extra])


def old_levels_of(state, ema: bool):
    """Level s+1's tensors of a grown checkpoint, keyed as level s's (trained or EMA weights)."""
    weights = {k.removeprefix("module."): v for k, v in state.ema.items()} if ema else state.model
    return {k.replace(f"levels.{s + 1}.", f"levels.{s}.", 1): v for s in range(2)
            for k, v in weights.items() if k.startswith(f"levels.{s + 1}.")}


def test_a_grown_run_records_its_parent_and_keeps_the_old_levels(folders, tmp_path):
    assert grow(folders, tmp_path) == 0
    parent = load_checkpoint(folders / "parent" / "checkpoints" / "step-00000002.pt")
    config = json.loads((tmp_path / "config.json").read_text())
    record = config["parent"]
    assert record["checkpoint"] == str((folders / "parent" / "checkpoints" / "step-00000002.pt").resolve())
    assert record["step"] == 2 and len(record["sha256"]) == 64 and record["weights"] == "ema"
    assert record["model_config"] == parent.model_config and record["data"]["image_shape"] == [1, 4, 4]
    assert config["model"]["image_shape"] == [1, 8, 8] and config["model"]["levels"] == 3
    assert config["model"]["net_options"][0] == {"hidden_channels": 6, "num_blocks": 1}
    assert config["trainer"]["trainable_levels"] == [0] and config["trainer"]["objective"]["type"] == "flow_matching"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["grown_from"] == {key: record[key] for key in ("checkpoint", "step", "sha256")}
    assert len(report["held_out"]["per_level_bpd"]) == 3
    grown = load_checkpoint(tmp_path / "checkpoints" / "step-00000002.pt")
    assert grown.parent == record
    parent_weights = {k.removeprefix("module."): v for k, v in parent.ema.items() if k.startswith("module.levels")}
    for ema in (False, True):  # frozen: neither the trained weights nor their average moved
        old = old_levels_of(grown, ema)
        assert old.keys() == parent_weights.keys()
        assert all(torch.equal(old[key], parent_weights[key]) for key in old)

    assert main(["train", "--data", str(folders / "big.npz"), "--steps", "3", "--out", str(tmp_path),
                 "--resume", *FLAGS]) == 0  # the run's own model, options and parent
    resumed = json.loads((tmp_path / "config.json").read_text())
    assert resumed["parent"] == record and resumed["trainer"]["trainable_levels"] == [0]
    assert load_checkpoint(tmp_path / "checkpoints" / "step-00000003.pt").parent == record


def test_fine_tuning_trains_the_old_levels_and_the_new_level_takes_its_net_options(folders, tmp_path):
    assert grow(folders, tmp_path, "--old-levels", "fine-tune", "--new-level-net-options",
                '{"hidden_channels": 3, "num_blocks": 1}', "--lr", "0.05") == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["trainer"]["trainable_levels"] == [0, 1, 2]
    assert config["model"]["net_options"][0] == {"hidden_channels": 3, "num_blocks": 1}
    parent = load_checkpoint(folders / "parent" / "checkpoints" / "step-00000002.pt")
    old = old_levels_of(load_checkpoint(tmp_path / "checkpoints" / "step-00000002.pt"), ema=False)
    assert not torch.equal(old["levels.0.flows.0.net.output.weight"],
                           parent.ema["module.levels.0.flows.0.net.output.weight"])


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--data", "{small}"], r"cannot grow .*step-00000002\.pt' \(images \(1, 4, 4\), n_bins=4\) on .*small\.npz "
                                r"\(images \(1, 4, 4\), n_bins=4\): growth needs images \(1, 8, 8\) with n_bins=4"),
        (["--levels", "0"], "--levels cannot be combined with --grow-from"),
        (["--resume"], "--grow-from starts a new run from a trained model; continue a grown run with --resume alone"),
    ],
)
def test_growth_errors_before_training(folders, tmp_path, capsys, extra, match):
    extra = [e.format(small=folders / "small.npz") for e in extra]
    assert grow(folders, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_what_is_not_a_multi_resolution_model_or_not_growth_is_refused(folders, tmp_path, capsys):
    glow = tmp_path / "glow"
    assert main(["train", "--recipe", "glow", "--data", str(folders / "small.npz"), "--steps", "1",
                 "--batch-size", "16", "--out", str(glow), *FLAGS]) == 0
    capsys.readouterr()
    assert main(["train", "--grow-from", str(glow), "--data", str(folders / "big.npz"), "--out",
                 str(tmp_path / "out"), *FLAGS]) == 2
    assert "holds a glow model; only a multi-resolution model (mrcnf) can grow" in capsys.readouterr().err
    for flag in (["--old-levels", "frozen"], ["--new-level-net-options", "{}"]):
        assert main(["train", *flag, "--steps", "1", "--out", str(tmp_path / "out"), *FLAGS]) == 2
        assert "--old-levels and --new-level-net-options apply to --grow-from" in capsys.readouterr().err
