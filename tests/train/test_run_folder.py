"""The run folder: its file names, the checkpoint rotation, and claims that never touch a user's own files."""

from __future__ import annotations

import json

import pytest
from train_helpers import tiny_glow

from flowplug.train import Checkpoint, CheckpointError, TrainConfig, Trainer, load_checkpoint
from flowplug.train.run_folder import RunFolder


def _checkpoint(step: int) -> Checkpoint:
    return Checkpoint(model_config={"type": "toy"}, model={}, step=step)


def test_names(tmp_path):
    folder = RunFolder(str(tmp_path))
    assert folder.root == tmp_path
    assert (folder.config, folder.metrics, folder.report_json, folder.report_txt) == (
        tmp_path / "config.json", tmp_path / "metrics.csv", tmp_path / "report.json", tmp_path / "report.txt")
    assert folder.best == tmp_path / "checkpoints" / "best.pt"
    assert folder.step_checkpoint(42) == tmp_path / "checkpoints" / "step-00000042.pt"
    assert folder.samples(7, 1.0) == tmp_path / "samples" / "step-00000007-t1.png"
    assert RunFolder.samples_of(folder.best, 0.8) == tmp_path / "samples" / "best-t0.8.png"
    assert RunFolder.samples_of(tmp_path / "elsewhere" / "mine.pt", 1.0) == tmp_path / "elsewhere" / "samples" / \
        "mine-t1.png"


def test_step_checkpoints_are_ordered_by_their_number(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.step_checkpoints() == [] and folder.latest() is None and folder.load_latest() is None
    folder.checkpoints.mkdir()
    for name in ("step-9.pt", "step-00000010.pt", "step-2.pt", "step-abc.pt", "step-3.pt.bak", "best.pt"):
        (folder.checkpoints / name).write_bytes(b"")
    assert [p.name for p in folder.step_checkpoints()] == ["step-2.pt", "step-9.pt", "step-00000010.pt"]
    assert folder.latest() == folder.checkpoints / "step-00000010.pt"


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    folder = RunFolder(tmp_path)
    for step in (1, 2, 3, 4):
        folder.save_rotating(_checkpoint(step), keep_last=2, best=step == 2)
    assert [p.name for p in folder.step_checkpoints()] == ["step-00000003.pt", "step-00000004.pt"]
    path, checkpoint, notes = folder.load_latest()
    assert path == folder.step_checkpoint(4) and checkpoint.step == 4 and notes == []
    assert load_checkpoint(folder.best).step == 2


def test_the_newest_readable_checkpoint_is_found_past_damaged_ones(tmp_path):
    folder = RunFolder(tmp_path)
    for step in (1, 2):
        folder.save_rotating(_checkpoint(step), keep_last=5, best=False)
    torn = folder.step_checkpoint(2).read_bytes()[:600]  # a write cut short
    folder.step_checkpoint(3).write_bytes(torn)
    _, checkpoint, notes = folder.load_latest()
    assert checkpoint.step == 2 and len(notes) == 1 and notes[0].startswith(f"skipped {folder.step_checkpoint(3)}")
    for step in (1, 2):
        folder.step_checkpoint(step).write_bytes(torn)
    with pytest.raises(CheckpointError, match="no intact checkpoint in"):
        folder.load_latest()


def test_later_checkpoints_are_set_aside_and_temporaries_removed(tmp_path):
    folder = RunFolder(tmp_path)
    for step in (3, 6, 9):
        folder.save_rotating(_checkpoint(step), keep_last=5, best=False)
    stale = folder.checkpoints / ".step-00000012.pt.x1.tmp"
    stale.write_bytes(b"half")
    moved = folder.set_aside_after(3)
    assert [p.name for p in moved] == ["step-00000006.pt", "step-00000009.pt"]
    assert all(p.parent == folder.superseded for p in moved)
    assert [p.name for p in folder.step_checkpoints()] == ["step-00000003.pt"]
    assert folder.remove_stale_temporaries() == [stale] and not stale.exists()


def test_what_counts_as_a_run(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert not folder.holds_run()
    folder.root.mkdir()
    (folder.root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert not folder.holds_run()  # a folder the desktop touched is no run
    folder.config.write_text(json.dumps({"name": "my own config"}))
    assert not folder.holds_run()  # another program's config.json neither
    folder.config.write_text("{not json")
    assert not folder.holds_run()
    folder.config.write_text(json.dumps({"trainer": {}, "model": {}}))
    assert folder.holds_run()
    folder.config.unlink()
    folder.checkpoints.mkdir()
    (folder.checkpoints / "notes.txt").write_text("mine")
    assert not folder.holds_run()
    folder.save_rotating(_checkpoint(1), keep_last=1, best=True)
    assert folder.holds_run()
    folder.step_checkpoint(1).unlink()
    assert folder.holds_run()  # best.pt alone is a run's too


def test_a_folder_with_only_a_ds_store_is_trained_into_without_overwrite(tiny_data, tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    config = TrainConfig(steps=1, batch_size=16, progress=False, tensorboard=False)
    Trainer(tiny_glow(), config, out_dir=tmp_path, device="cpu").fit(tiny_data)
    assert (tmp_path / ".DS_Store").read_bytes() == b"\0\0\0\1Bud1" and RunFolder(tmp_path).latest() is not None


def test_claims(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        RunFolder(tmp_path / "file").claim(overwrite=True)
    RunFolder(tmp_path / "new").claim(overwrite=False)  # nothing there: nothing to refuse
    assert not (tmp_path / "new").exists()


def test_overwrite_deletes_what_a_run_wrote_and_nothing_else(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.write_config({"trainer": {}, "model": {}})
    for path in (folder.metrics, folder.report_json, folder.report_txt, folder.tensorboard / "events.out"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("run")
    for step in (1, 2, 3):
        folder.save_rotating(_checkpoint(step), keep_last=5, best=step == 3)
    folder.set_aside_after(1)
    (folder.checkpoints / ".step-00000004.pt.x.tmp").write_text("half")
    folder.samples(3, 1.0).parent.mkdir()
    folder.samples(3, 1.0).write_text("run")
    mine = [folder.root / "notes.txt", folder.checkpoints / "step-backup.pt", folder.checkpoints / "final.pt",
            folder.superseded / "notes.txt", folder.root / "samples" / "favourite.png",
            folder.root / "samples" / "step-3.png"]
    for path in mine:
        path.write_text("mine")
    outside = tmp_path / "my-grids"  # a samples/ that is a link to the user's own folder is not followed
    outside.mkdir()
    (outside / "step-00000001-t1.png").write_text("mine")
    with pytest.raises(ValueError, match="already holds a run"):
        folder.claim(overwrite=False)
    written = set(folder.written_files())
    assert not written & set(mine)
    folder.claim(overwrite=True)
    assert all(path.read_text() == "mine" for path in mine)
    assert sorted(p.relative_to(folder.root).as_posix() for p in folder.root.rglob("*") if p.is_file()) == sorted(
        p.relative_to(folder.root).as_posix() for p in mine)
    assert not folder.holds_run()
    (folder.root / "samples").rename(tmp_path / "samples-before")
    (folder.root / "samples").symlink_to(outside)
    folder.save_rotating(_checkpoint(1), keep_last=1, best=False)
    folder.claim(overwrite=True)
    assert (outside / "step-00000001-t1.png").read_text() == "mine"
