"""No run is lost and a resume tells the truth: healthy-only checkpoints, best tracking, run-folder claims,
resume from a path or past a corrupt file, changed options applied or refused, schedule extension, Ctrl-C."""

from __future__ import annotations

import errno
import json
import math
import os
import stat

import pytest
import torch
from train_helpers import Exploding, interrupt_at, read_metric, tiny_glow

from flowplug.train import Checkpoint, CheckpointError, TrainConfig, Trainer, load_checkpoint
from flowplug.train import checkpoint as checkpoint_module
from flowplug.train import state as train_state
from flowplug.train.schedule import extension_segment, lr_factor

FAST = {"batch_size": 16, "progress": False, "tensorboard": False, "log_every": 1,
        "warmup_steps": 2, "lr": 3e-3, "precision": "float64"}


def _trainer(folder, steps, **options):
    config = TrainConfig(**{"steps": steps, "schedule": "constant", "checkpoint_every": 3, "keep_last": 5,
                            **FAST, **options})
    return Trainer(tiny_glow(), config, out_dir=folder, device="cpu")


def test_divergence_keeps_the_last_good_checkpoint_and_names_it(tiny_data, tmp_path, capfd):
    train, val = tiny_data.split(0.25)
    config = TrainConfig(steps=50, max_bad_steps=3, ema_decay=None, checkpoint_every=1, keep_last=1,
                         eval_every=1, **{k: v for k, v in FAST.items() if k != "precision"})
    # calls: 1 initialisation, then a step and an evaluation per step; the evaluation after step 3 is NaN
    trainer = Trainer(Exploding(start=6), config, out_dir=tmp_path, device="cpu")
    with pytest.warns(UserWarning, match="no checkpoint written"), \
            pytest.raises(FloatingPointError, match=r"step-00000002\.pt") as error:
        trainer.fit(train, val)
    good = tmp_path / "checkpoints" / "step-00000002.pt"
    assert str(good) in str(error.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", good.name]
    saved = load_checkpoint(good)
    assert saved.step == 2 and all(torch.isfinite(t).all() for t in saved.model.values())
    resumed = Trainer(Exploding(start=None), TrainConfig(**{**config.to_dict(), "steps": 5}),
                      out_dir=tmp_path, device="cpu")
    capfd.readouterr()
    assert resumed.fit(train, val, resume=good)["steps"] == 5
    assert f"resumed from {good} at step 2" in capfd.readouterr().err


def test_best_ignores_non_finite_evaluations_and_unhealthy_states_are_not_saved(tiny_data, tmp_path):
    train, val = tiny_data.split(0.25)
    trainer = _trainer(tmp_path, 5, eval_every=1, checkpoint_every=1)
    scores = iter([math.inf, 3.0, math.nan, 2.5, math.inf, math.inf])  # after steps 1 to 5, and the final one
    best, train_step = [], trainer.train_step

    def scored(data, **options):
        return {"bpd": next(scores), "per_level_bpd": [0.0], "num_images": len(data)}

    def noting_the_best(batch):
        best.append(trainer.best_val_bpd)
        return train_step(batch)

    trainer.evaluate, trainer.train_step = scored, noting_the_best
    with pytest.warns(UserWarning, match="no checkpoint written, the last step, the last evaluation or the weights "
                                         "are not finite"):
        trainer.fit(train, val)
    assert [*best[1:], trainer.best_val_bpd] == [None, 3.0, 3.0, 2.5, 2.5]
    # the states after a non-finite evaluation (steps 1, 3, 5 and the end) were not saved, least of all as best.pt
    assert [p.name for p in trainer.folder.step_checkpoints()] == ["step-00000002.pt", "step-00000004.pt"]
    saved_best = load_checkpoint(trainer.folder.best)
    assert saved_best.step == 4 and saved_best.best_val_bpd == 2.5
    assert not train_state.healthy(trainer)


def test_a_new_run_refuses_a_folder_holding_a_run_unless_told(tiny_data, tmp_path):
    _trainer(tmp_path, 3, sample_every=3).fit(tiny_data)
    mine = {"notes.txt": "mine", "checkpoints/step-backup.pt": "mine", "checkpoints/notes.txt": "mine",
            "samples/favourite.png": "mine", "samples/step-3.png": "mine"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    assert (tmp_path / "samples" / "step-00000003-t1.png").exists()
    with pytest.raises(ValueError, match=r"already holds a run.*--overwrite"):
        _trainer(tmp_path, 2).fit(tiny_data)
    assert load_checkpoint(tmp_path / "checkpoints" / "step-00000003.pt").step == 3
    _trainer(tmp_path, 2).fit(tiny_data, overwrite=True)
    # the run's files went, the user's stayed, even beside the run's in checkpoints/ and samples/
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "notes.txt", "step-00000002.pt", "step-backup.pt"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "favourite.png", "step-00000002-t1.png", "step-3.png"]
    assert all((tmp_path / name).read_text() == "mine" for name in mine)
    assert max(read_metric(tmp_path, "loss")) == 2


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_stops(tiny_data, tmp_path, capfd):
    whole = _trainer(tmp_path / "whole", 6, checkpoint_every=100)
    whole.fit(tiny_data)
    parts = tmp_path / "parts"
    trainer = _trainer(parts, 6, checkpoint_every=100)
    interrupt_at(trainer, 3)
    capfd.readouterr()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(tiny_data)
    assert [p.name for p in trainer.folder.step_checkpoints()] == ["step-00000003.pt"]
    assert load_checkpoint(parts / "checkpoints" / "step-00000003.pt").step == 3
    err = capfd.readouterr().err
    assert "interrupted at step 3" in err and f"--resume {parts / 'checkpoints' / 'step-00000003.pt'}" in err
    resumed = _trainer(parts, 6, checkpoint_every=100)
    resumed.fit(tiny_data, resume=True)  # and the run goes on as if it had not stopped
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ctrl_c_without_a_run_folder_or_before_the_first_step_writes_nothing(tiny_data, tmp_path):
    trainer = Trainer(tiny_glow(), TrainConfig(steps=6, **FAST), device="cpu")
    interrupt_at(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(tiny_data)
    assert trainer.step == 2
    early = _trainer(tmp_path, 6)
    interrupt_at(early, 0)
    with pytest.raises(KeyboardInterrupt):
        early.fit(tiny_data)
    assert early.folder.step_checkpoints() == []


def test_resume_falls_back_past_a_corrupt_checkpoint_exactly(tiny_data, tmp_path, capfd):
    whole = _trainer(tmp_path / "whole", 9)
    whole.fit(tiny_data)
    parts = tmp_path / "parts"
    _trainer(parts, 6).fit(tiny_data)
    newest = parts / "checkpoints" / "step-00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a torn write
    stale = parts / "checkpoints" / ".step-00000006.pt.abc.tmp"
    stale.write_bytes(b"partial")
    capfd.readouterr()
    resumed = _trainer(parts, 9)
    resumed.fit(tiny_data, resume=True)
    err = capfd.readouterr().err
    assert f"skipped {newest}" in err and "at step 3" in err and "removed" in err and not stale.exists()
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    rows = [tuple(line.split(",")[i] for i in (0, 2, 3))
            for line in (parts / "metrics.csv").read_text().splitlines()[1:]]
    assert len(rows) == len(set(rows))  # no step logged twice
    assert read_metric(parts, "loss") == read_metric(tmp_path / "whole", "loss")


def test_resume_from_an_earlier_checkpoint_sets_the_later_ones_aside(tiny_data, tmp_path):
    _trainer(tmp_path, 6).fit(tiny_data)
    _trainer(tmp_path, 4).fit(tiny_data, resume=tmp_path / "checkpoints" / "step-00000003.pt")
    assert (tmp_path / "checkpoints" / "superseded" / "step-00000006.pt").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000003.pt", "step-00000004.pt"]


def test_a_changed_rate_is_applied_and_recorded_other_changes_are_refused(tiny_data, tmp_path, capfd):
    _trainer(tmp_path, 3).fit(tiny_data)
    trainer = _trainer(tmp_path, 5, lr=1e-2)
    trainer.fit(tiny_data, resume=True)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["trainer"]["lr"] == 1e-2 and config["resumes"][0]["changed"]["lr"] == [3e-3, 1e-2]
    assert "lr: 0.003 -> 0.01" in capfd.readouterr().err
    assert load_checkpoint(tmp_path / "checkpoints" / "step-00000005.pt").resumes[0]["step"] == 3
    with pytest.raises(ValueError, match="batch_size 16 -> 32"):
        _trainer(tmp_path, 6, batch_size=32).fit(tiny_data, resume=True)
    assert "phases" in train_state.REFUSED and "lr" in train_state.APPLIED
    plan = [{"objective": "likelihood", "until": 0.5}, {"objective": "likelihood", "lr": 1e-4}]
    with pytest.raises(ValueError, match="cannot resume with a changed phases"):
        _trainer(tmp_path, 6, phases=plan).fit(tiny_data, resume=True)


def test_a_trainers_state_goes_into_a_checkpoint_and_back(tiny_data, tmp_path):
    trainer = _trainer(None, 4, phases=[{"objective": "likelihood", "until": {"step": 2}},
                                        {"objective": "likelihood", "lr": 1e-4}])
    trainer.fit(tiny_data)
    checkpoint = train_state.checkpoint_of(trainer, tiny_data.info())
    assert (checkpoint.step, checkpoint.phase, checkpoint.phase_starts) == (4, 1, [0, 2])
    assert checkpoint.trainer_config == trainer.config.to_dict() and checkpoint.rng is not None
    other = _trainer(None, 4, phases=trainer.config.phases)
    train_state.load_into(other, checkpoint, tiny_data.info())
    assert (other.step, other.phase, other.phase_starts) == (4, 1, [0, 2])
    assert other.optimizer.param_groups[0]["lr"] == 1e-4  # the phase's rate, set from the restored state
    for a, b in zip(trainer.ema.module.state_dict().values(), other.ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    restored = Trainer.restore(checkpoint, device="cpu")
    assert restored.step == 4 and restored.phase == 1 and restored.out_dir is None
    assert restored.evaluate(tiny_data)["bpd"] == trainer.evaluate(tiny_data)["bpd"]
    with pytest.raises(CheckpointError, match="in phase 2 of a plan this config's 1 phase"):
        train_state.load_into(_trainer(None, 4), checkpoint, tiny_data.info())


def test_extending_the_budget_adds_a_cosine_segment_without_a_jump(tiny_data, tmp_path):
    config = TrainConfig(steps=100, warmup_steps=10)
    segment = extension_segment(config, 60, 100, 200, None)
    assert segment[0] == 60 and lr_factor(config, 60, 200, segment) == lr_factor(config, 60, 100)
    assert lr_factor(config, 200, 200, segment) == 0.0
    finished = extension_segment(config, 100, 100, 200, None)  # rate 0 reached: a schedule planned for 200
    assert finished == (100, lr_factor(config, 100, 200))
    assert extension_segment(config, 100, 100, 100, None) is None
    _trainer(tmp_path, 4, schedule="cosine").fit(tiny_data)
    extended = _trainer(tmp_path, 8, schedule="cosine")
    extended.fit(tiny_data, resume=True)
    record = json.loads((tmp_path / "config.json").read_text())["resumes"][0]
    assert record["schedule_segment"] == [4, lr_factor(extended.config, 4, 8)]
    assert extended.segment == (4, lr_factor(extended.config, 4, 8))
    rates = read_metric(tmp_path, "lr")  # logged after step s, which ran at the rate of step s - 1
    assert rates[4] == pytest.approx(3e-3 * lr_factor(extended.config, 3, 4))  # the old schedule's last step
    assert rates[5] == pytest.approx(3e-3 * record["schedule_segment"][1])  # the segment's first: no jump to 3e-3
    assert rates[5] > rates[6] > rates[7] > rates[8] > 0
    assert lr_factor(extended.config, 8, 8, extended.segment) == 0.0  # the new segment ends at 0 too
    elapsed = read_metric(tmp_path, "loss")
    assert sorted(elapsed) == list(range(1, 9))


def test_elapsed_time_continues_across_resumes(tiny_data, tmp_path):
    import csv

    _trainer(tmp_path, 3).fit(tiny_data)
    _trainer(tmp_path, 6).fit(tiny_data, resume=True)
    with (tmp_path / "metrics.csv").open() as file:
        times = [float(r["elapsed_s"]) for r in csv.DictReader(file) if r["metric"] == "loss"]
    assert times == sorted(times) and len(times) == 6


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")],
                         ids=["oserror", "torch-runtimeerror"])
def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch, error):
    path = tmp_path / "step.pt"
    checkpoint_module.save_checkpoint(Checkpoint(model={}, model_config={}, step=1), path)

    def full_disk(obj, file):
        file.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"No space|disk full"):
        checkpoint_module.save_checkpoint(Checkpoint(model={}, model_config={}, step=2), path)
    assert load_checkpoint(path).step == 1 and [p.name for p in tmp_path.iterdir()] == ["step.pt"]


def test_the_folder_is_flushed_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(checkpoint_module.os, "fsync",
                        lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd)))
    checkpoint_module.save_checkpoint(Checkpoint(model={}, model_config={}, step=1), tmp_path / "c.pt")
    assert synced == [False, True]
