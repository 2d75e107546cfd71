"""Progressive training with the trainer: the parent checkpoint is found and checked, its record is kept, and a
grown model's frozen levels stay bit for bit what they were through optimiser and EMA updates."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_glow

from flowplug import haar_decompose
from flowplug.data import ImageData
from flowplug.models.mrcnf import MRCNF
from flowplug.train import CheckpointError, TrainConfig, Trainer, load_checkpoint
from flowplug.train.growth import load_parent, parent_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SOLVER = {"method": "rk4", "step_size": 1.0}
TINY = {"net": "res_odenet", "net_options": [{"hidden_channels": 6, "num_blocks": 1}, {"hidden_channels": 4}],
        "divergence": "exact", "train_solver": SOLVER, "eval_solver": SOLVER, "logit_alpha": 1e-3}
CONFIG = {"steps": 3, "batch_size": 16, "objective": "flow_matching", "precision": "float64", "progress": False,
          "tensorboard": False, "warmup_steps": 1, "lr": 1e-2, "ema_decay": 0.9}


def ramp_images(n: int, size: int, seed: int = 0) -> ImageData:
    """``n`` images 1×size×size with 4 levels: a ramp plus noise."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 3, size).view(1, 1, 1, size)
    x = (ramp + torch.randn(n, 1, size, size, generator=generator) * 0.7).round().clamp(0, 3)
    return ImageData(x.to(torch.uint8), 4, f"ramp{size}")


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory):
    """A run folder of a 2-level MRCNF trained 3 steps on 4×4 images (float64)."""
    out = tmp_path_factory.mktemp("parent")
    torch.manual_seed(0)
    Trainer(MRCNF((1, 4, 4), levels=2, **TINY), TrainConfig(**CONFIG), out_dir=out, device="cpu").fit(
        ramp_images(48, 4))
    return out


def test_a_run_folder_names_its_newest_checkpoint(parent_run):
    path, state = parent_checkpoint(parent_run)
    assert path == parent_run / "checkpoints" / "step-00000003.pt" and state.step == 3
    assert parent_checkpoint(path)[0] == path


def test_the_parent_takes_the_checkpoints_ema_weights_and_is_recorded(parent_run):
    parent, record = load_parent(parent_run, ramp_images(4, 8))
    state = load_checkpoint(parent_run / "checkpoints" / "step-00000003.pt")
    ema = {k.removeprefix("module."): v for k, v in state.ema.items() if k.startswith("module.")}
    assert all(torch.equal(value, ema[key]) for key, value in parent.state_dict().items())
    key = "levels.0.flows.0.net.output.weight"
    assert not torch.equal(ema[key], state.model[key])
    assert record["step"] == 3 and record["weights"] == "ema" and len(record["sha256"]) == 64
    assert record["model_config"] == state.model_config and record["parent"] is None
    assert record["checkpoint"] == str((parent_run / "checkpoints" / "step-00000003.pt").resolve())


def test_frozen_old_levels_stay_bit_for_bit_through_training_and_ema(parent_run, tmp_path):
    parent, record = load_parent(parent_run, ramp_images(4, 8))
    parent.eval()
    torch.manual_seed(1)
    trainer = Trainer(parent.grow(), TrainConfig(**CONFIG, trainable_levels=[0]), out_dir=tmp_path, device="cpu",
                      parent=record)
    data = ramp_images(48, 8, seed=1)
    trainer.fit(data)
    grown = trainer.model.eval()
    for model in (grown, trainer.eval_model()):  # the trained weights and their average
        for s in range(2):
            old, new = parent.levels[s].state_dict(), model.levels[s + 1].state_dict()
            assert all(torch.equal(old[key], new[key]) for key in old), f"level {s} drifted"
    assert not torch.equal(grown.levels[0].flows[0].net.output.weight,
                           parent.grow().levels[0].flows[0].net.output.weight)  # the new level trained
    v = (data.x[:5].double() + torch.rand(5, 1, 8, 8, dtype=torch.float64)) / 4
    with torch.no_grad():
        before, after = parent.level_log_probs(haar_decompose(v)[0]), trainer.eval_model().level_log_probs(v)
    assert all(torch.equal(b, a) for b, a in zip(before, after[1:], strict=True))
    state = load_checkpoint(tmp_path / "checkpoints" / "step-00000003.pt")
    assert state.parent == record


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (ramp_images(4, 4), r"\(images \(1, 4, 4\), n_bins=4\) on ramp4 \(images \(1, 4, 4\), n_bins=4\): "
                            r"growth needs images \(1, 8, 8\) with n_bins=4"),
        (ramp_images(4, 16), r"on ramp16 \(images \(1, 16, 16\), n_bins=4\): growth needs images \(1, 8, 8\)"),
        (ImageData(torch.zeros(4, 2, 8, 8, dtype=torch.uint8), 4, "rgb"), r"growth needs images \(1, 8, 8\)"),
        (ImageData(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), 256, "bytes"),
         r"\(images \(1, 8, 8\), n_bins=256\): growth needs images \(1, 8, 8\) with n_bins=4"),
    ],
)
def test_data_that_is_not_twice_the_parents_size_is_refused(parent_run, data, match):
    with pytest.raises(ValueError, match=match):
        load_parent(parent_run, data)


def test_what_cannot_grow_is_refused(parent_run, tmp_path):
    zeros = ImageData(torch.zeros(32, 2, 4, 4, dtype=torch.uint8), 4, "zeros")
    Trainer(tiny_glow(), TrainConfig(steps=1, batch_size=16, progress=False, tensorboard=False),
            out_dir=tmp_path / "glow", device="cpu").fit(zeros)
    with pytest.raises(CheckpointError, match=r"holds a glow model; only a multi-resolution model \(mrcnf\)"):
        load_parent(tmp_path / "glow", ramp_images(4, 8))
    with pytest.raises(FileNotFoundError, match="is neither a checkpoint file nor a run folder"):
        load_parent(tmp_path / "nowhere", ramp_images(4, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no step checkpoint in checkpoints/"):
        load_parent(tmp_path / "empty", ramp_images(4, 8))
