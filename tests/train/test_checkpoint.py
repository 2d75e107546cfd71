"""Checkpoints: atomic writes survive a crash, unsafe or broken files are refused clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from train_helpers import tiny_glow

from flowplug.train import CheckpointError, build_model, load_checkpoint, save_checkpoint


def _state(value):
    model = tiny_glow()
    return {"model": model.state_dict(), "model_config": model.config, "step": value}


def test_round_trip_rebuilds_the_model(tmp_path):
    state = _state(7)
    path = save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7
    model = build_model(loaded)
    v = torch.rand(3, 2, 4, 4)
    torch.testing.assert_close(model.log_prob(v), tiny_glow().log_prob(v), rtol=0, atol=0)


def test_process_killed_before_the_rename_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    script = textwrap.dedent(f"""
        import os, torch
        from flowplug.train.checkpoint import save_checkpoint
        state = {{"model": {{"w": torch.zeros(3)}}, "model_config": {{"type": "glow"}}, "step": 1}}
        save_checkpoint(state, {str(path)!r})
        os.replace = lambda *args: os._exit(9)   # the process dies after writing the temp file
        save_checkpoint({{**state, "step": 2}}, {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=".", capture_output=True)
    assert result.returncode == 9, result.stderr.decode()
    assert list(tmp_path.glob(".c.pt.*.tmp")), "the interrupted write left its temporary file"
    assert load_checkpoint(path)["step"] == 1


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = save_checkpoint(_state(1), tmp_path / "c.pt")
    data = path.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "t.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="not a flowplug checkpoint"):
        load_checkpoint(tmp_path / "f.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatched_weights_are_refused(tmp_path):
    state = _state(1)
    state["model_config"] = {**state["model_config"], "hidden_channels": 4}
    with pytest.raises(CheckpointError, match="do not fit"):
        build_model(load_checkpoint(save_checkpoint(state, tmp_path / "c.pt")))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"format": "flowplug-checkpoint-v1", "model": _Payload(str(marker))},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
