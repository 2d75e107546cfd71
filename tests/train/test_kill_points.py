"""What a process killed at an awkward moment leaves, and what the next command makes of it (the long version:
``tests/fault/kill_trials.py``): ``best.pt`` is never behind the newest step checkpoint, a resume that finds no
checkpoint is a new run, a finished run resumed saves what it had saved, and a diverged run's error prints a
command that names the run's data."""

from __future__ import annotations

import json
import shlex
from types import SimpleNamespace

import pytest
import torch
from train_helpers import tiny_glow

from flowplug.train import Checkpoint, TrainConfig, Trainer, load_checkpoint
from flowplug.train import run_folder as run_folder_module
from flowplug.train import state as train_state
from flowplug.train.run_folder import RunFolder
from flowplug.train.schedule import learning_rate


def _trainer(folder, steps, **options):
    config = TrainConfig(steps=steps, batch_size=16, warmup_steps=2, progress=False, tensorboard=False,
                         log_every=1, checkpoint_every=1, **options)
    return Trainer(tiny_glow(), config, out_dir=folder, device="cpu")


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


def test_best_is_written_before_the_step_checkpoint(tmp_path, monkeypatch):
    folder, written = RunFolder(tmp_path), []
    original = run_folder_module.save_checkpoint

    def save(checkpoint, path):
        written.append(path.name)
        if path.name.startswith("step-") and checkpoint.step == 2:
            raise _Killed
        return original(checkpoint, path)

    monkeypatch.setattr(run_folder_module, "save_checkpoint", save)
    folder.save_rotating(Checkpoint(model_config={"type": "toy"}, model={}, step=1), keep_last=2, best=True)
    with pytest.raises(_Killed):
        folder.save_rotating(Checkpoint(model_config={"type": "toy"}, model={}, step=2), keep_last=2, best=True)
    assert written == ["best.pt", "step-00000001.pt", "best.pt", "step-00000002.pt"]
    # killed between the two writes: the newest step file is older than best.pt, never newer, so the resumed run
    # evaluates step 2 again and writes best.pt again
    assert folder.latest() == folder.step_checkpoint(1) and load_checkpoint(folder.best).step == 2


def test_a_resume_that_finds_no_checkpoint_is_the_same_run_as_a_new_one(tiny_data, tmp_path, capfd):
    _trainer(tmp_path / "new", 3).fit(tiny_data)
    (tmp_path / "killed").mkdir()  # a run killed before its first checkpoint left the folder
    torch.manual_seed(12345)  # whatever the process drew before
    _trainer(tmp_path / "killed", 3).fit(tiny_data, resume=True)
    assert "no checkpoint in" in capfd.readouterr().err
    new, resumed = (load_checkpoint(tmp_path / name / "checkpoints" / "step-00000003.pt") for name in
                    ("new", "killed"))
    assert torch.equal(new.rng["torch"], resumed.rng["torch"])
    assert all(torch.equal(new.model[k], resumed.model[k]) for k in new.model)


def test_a_finished_run_resumed_saves_the_checkpoint_it_had_saved(tiny_data, tmp_path, capfd):
    _trainer(tmp_path, 4).fit(tiny_data)
    path = tmp_path / "checkpoints" / "step-00000004.pt"
    before = load_checkpoint(path)
    _trainer(tmp_path, 4).fit(tiny_data, resume=True)  # e.g. after a kill during the final report
    assert "already spent" in capfd.readouterr().err
    after = load_checkpoint(path)
    assert after.optimizer["param_groups"] == before.optimizer["param_groups"]  # the rates of the last step
    config = _trainer(None, 4).config
    assert after.optimizer["param_groups"][0]["lr"] != learning_rate(config, 4, 4, None, config.phases[0])


def _hint_for(tmp_path, data):
    folder = RunFolder(tmp_path / "my run")
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    folder.step_checkpoint(5).write_bytes(b"")
    folder.config.write_text(json.dumps({"trainer": {}, "model": {}, "data": data}))
    hint = train_state.resume_hint(SimpleNamespace(folder=folder))
    command = hint.split("`")[1]
    return hint, shlex.split(command)


def test_the_printed_resume_command_names_the_runs_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    split = {"holdout": 0.1, "seed": 0, "part": "train"}
    _, command = _hint_for(tmp_path, {"name": "digits[train]", "image_shape": [1, 8, 8],
                                      "split": {"of": "digits", **split}})
    assert command == ["flowplug", "train", "--out", str(tmp_path / "my run"), "--resume",
                       str(tmp_path / "my run" / "checkpoints" / "step-00000005.pt")]  # digits: the default
    _, command = _hint_for(tmp_path, {"name": "my data.npz[train]", "image_shape": [3, 8, 8],
                                      "split": {"of": "my data.npz", **split}})
    assert command[-2:] == ["--data", "my data.npz"]
    (tmp_path / "photos").mkdir()
    _, command = _hint_for(tmp_path, {"name": "photos[train]", "image_shape": [1, 16, 16],
                                      "split": {"of": "photos", **split}})
    assert command[-6:] == ["--data", "photos", "--channels", "1", "--size", "16"]
    hint, command = _hint_for(tmp_path, {"name": "crops32", "image_shape": [3, 32, 32]})
    assert command[-2:] == ["--data", "crops32"]
    hint, command = _hint_for(tmp_path, {"name": "cifar10[train]", "image_shape": [3, 32, 32],
                                         "split": {"of": "cifar10", **split}})
    assert command[-2:] == ["--data", "cifar10"] and "with the --data-root it was trained with" in hint
