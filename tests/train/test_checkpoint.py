"""Checkpoints: atomic writes survive a crash, unsafe, damaged or broken files are refused clearly, older format
versions are migrated and newer ones refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from train_helpers import tiny_glow

from flowplug.train import Checkpoint, CheckpointError, build_model, load_checkpoint, save_checkpoint
from flowplug.train.checkpoint import FORMAT, VERSION


def _checkpoint(step: int) -> Checkpoint:
    model = tiny_glow()
    return Checkpoint(model_config=model.config, model=model.state_dict(), step=step)


def test_round_trip_rebuilds_the_model(tmp_path):
    path = save_checkpoint(_checkpoint(7), tmp_path / "c.pt")
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Checkpoint) and loaded.step == 7
    model = build_model(loaded)
    v = torch.rand(3, 2, 4, 4)
    torch.testing.assert_close(model.log_prob(v), tiny_glow().log_prob(v), rtol=0, atol=0)


def test_the_file_names_its_format_and_version(tmp_path):
    path = save_checkpoint(_checkpoint(1), tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT == "flowplug-checkpoint" and raw["version"] == VERSION == 2


def test_weights_are_the_ema_copy_unless_asked_for_the_trained_ones():
    checkpoint = _checkpoint(1)
    averaged = {f"module.{key}": value + 1 for key, value in checkpoint.model.items() if value.is_floating_point()}
    checkpoint.ema = {**averaged, "n_averaged": torch.tensor(3)}
    ema = checkpoint.weights()
    assert set(ema) == {key.removeprefix("module.") for key in averaged}
    assert all(torch.equal(ema[key.removeprefix("module.")], value) for key, value in averaged.items())
    assert checkpoint.weights(use_ema=False) is checkpoint.model
    checkpoint.ema = None
    assert checkpoint.weights() is checkpoint.model


def test_process_killed_before_the_rename_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    script = textwrap.dedent(f"""
        import dataclasses, os, torch
        from flowplug.train.checkpoint import Checkpoint, save_checkpoint
        checkpoint = Checkpoint(model={{"w": torch.zeros(3)}}, model_config={{"type": "glow"}}, step=1)
        save_checkpoint(checkpoint, {str(path)!r})
        os.replace = lambda *args: os._exit(9)   # the process dies after writing the temp file
        save_checkpoint(dataclasses.replace(checkpoint, step=2), {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=".", capture_output=True)
    assert result.returncode == 9, result.stderr.decode()
    assert list(tmp_path.glob(".c.pt.*.tmp")), "the interrupted write left its temporary file"
    assert load_checkpoint(path).step == 1


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = save_checkpoint(_checkpoint(1), tmp_path / "c.pt")
    data = path.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "t.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="not a flowplug checkpoint"):
        load_checkpoint(tmp_path / "f.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\0" * 64,
        bytes(range(256)),
        b"torn",
        b"hello world",
    ],
    ids=["empty", "zeros", "bytes", "torn", "text"],
)
def test_garbage_files_are_refused_as_checkpoint_errors(tmp_path, content):
    (tmp_path / "g.pt").write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "g.pt")


def test_a_flipped_byte_in_the_optimiser_state_is_found_on_load(tmp_path):
    model = tiny_glow()
    optimizer = torch.optim.AdamW(model.parameters())
    model.log_prob(torch.rand(4, 2, 4, 4)).mean().neg().backward()
    optimizer.step()
    checkpoint = Checkpoint(model_config=model.config, model=model.state_dict(), step=1,
                            optimizer=optimizer.state_dict())
    path = save_checkpoint(checkpoint, tmp_path / "c.pt")
    assert load_checkpoint(path).step == 1
    moments = next(iter(optimizer.state.values()))["exp_avg_sq"]
    data = bytearray(path.read_bytes())
    at = data.find(moments.numpy().tobytes())
    assert at >= 0 and data.count(moments.numpy().tobytes()) == 1  # stored verbatim, once: in the optimiser state
    data[at + 1] ^= 0x10  # one bit of one second moment: the file still unpickles, with a wrong number
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is damaged: the CRC of its entry .*data/"):
        load_checkpoint(path)


def test_mismatched_weights_are_refused(tmp_path):
    checkpoint = _checkpoint(1)
    checkpoint.model_config = {**checkpoint.model_config, "hidden_channels": 4}
    with pytest.raises(CheckpointError, match="do not fit"):
        build_model(load_checkpoint(save_checkpoint(checkpoint, tmp_path / "c.pt")))


def _raw(checkpoint: Checkpoint, **changes) -> dict:
    return {**checkpoint.to_dict(), **changes}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"version": VERSION + 1}, f"has format version {VERSION + 1}; this flowplug reads versions 1 to {VERSION}"),
        ({"version": "2"}, "has format version '2'"),
        ({"surprise": 1}, r"has unknown entries \['surprise'\]"),
        ({"step": 1.5}, "step should be an? int, got float"),
        ({"format": "flowplug-checkpoint-v3"}, "not a flowplug checkpoint"),
        ({"parent": "elsewhere"}, "parent should be a dict or null, got str"),
        ({"trainer_config": {"steps": 2, "objective": {"type": "flow_matching", "coupling": "__import__('os')"}}},
         r"its trainer_config is not valid: flow_matching: unknown coupling \"__import__\('os'\)\""),
        ({"trainer_config": {"steps": 2, "objective": {"type": "flow_matching", "time_sampling": "uniform; rm"}}},
         "its trainer_config is not valid: flow_matching: unknown time_sampling 'uniform; rm'"),
        ({"trainer_config": {"steps": 2, "lr": 1e308}}, "its trainer_config is not valid: lr must be a positive"),
    ],
)
def test_newer_unknown_and_ill_typed_checkpoints_are_refused(tmp_path, changes, match):
    torch.save(_raw(_checkpoint(1), **changes), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "c.pt")


def test_a_checkpoint_without_required_entries_is_refused(tmp_path):
    raw = _raw(_checkpoint(1))
    del raw["model_config"]
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"lacks the entries \['model_config'\]"):
        load_checkpoint(tmp_path / "c.pt")


def test_version_1_is_migrated(tmp_path):
    """A checkpoint of the first format: its likelihood options become a plan, ``likelihood_from`` the phase,
    the scheduler's state goes and an MRCNF config without a net gets the then default."""
    mrcnf = {"type": "mrcnf", "image_shape": [2, 4, 4], "levels": 2}
    old = {
        "format": "flowplug-checkpoint-v1", "model": {"w": torch.zeros(2)}, "model_config": mrcnf, "step": 5,
        "scheduler": {"last_epoch": 5, "base_lrs": [1e-3]}, "likelihood_from": 4, "data": {"n_bins": 4},
        "trainer_config": {"steps": 8, "objective": {"type": "flow_matching"}, "likelihood_after": 4,
                           "likelihood_lr": 1e-4, "likelihood_levels": [0]},
        "parent": {"step": 1, "model_config": mrcnf},
    }
    torch.save(old, tmp_path / "old.pt")
    checkpoint = load_checkpoint(tmp_path / "old.pt")
    assert checkpoint.phase == 1 and checkpoint.phase_starts == [0, 4] and checkpoint.step == 5
    assert checkpoint.model_config == {**mrcnf, "net": "conv_odenet"}
    assert checkpoint.parent["model_config"] == {**mrcnf, "net": "conv_odenet"}
    config = checkpoint.trainer_config
    assert not {"likelihood_after", "likelihood_lr", "likelihood_levels"} & set(config)
    assert config["objective"] == config["phases"][0]["objective"] == {"type": "flow_matching"}  # validated
    assert config["phases"] == [
        {"objective": {"type": "flow_matching"}, "until": {"step": 4}, "lr": None, "levels": None},
        {"objective": {"type": "likelihood"}, "until": None, "lr": 1e-4, "levels": [0]}]
    assert "scheduler" not in checkpoint.to_dict()
    # before the phase was recorded, a run past likelihood_after was in the phase from that step on
    del old["likelihood_from"]
    torch.save(old, tmp_path / "older.pt")
    assert load_checkpoint(tmp_path / "older.pt").phase_starts == [0, 4]
    torch.save({**old, "step": 3}, tmp_path / "before.pt")
    before = load_checkpoint(tmp_path / "before.pt")
    assert before.phase == 0 and before.phase_starts == [0]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("header", [{"format": "flowplug-checkpoint-v1"}, {"format": FORMAT, "version": VERSION}])
def test_a_checkpoint_that_would_execute_code_is_refused(tmp_path, header):
    marker = tmp_path / "executed"
    torch.save({**header, "model": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
