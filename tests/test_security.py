"""Files name objectives and components only by registered names: loading one never imports anything.

Each hostile name below would run code if flowplug imported what a checkpoint or config names: ``os:system``,
a module in the working directory that leaves a marker file when imported, and a standard-library module with
an import side effect (``this`` prints a poem). Loading through the Python API and the CLI must fail with a
message that names the unknown entry and says how to register one, import nothing, and leave no marker.
"""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest

import flowplug
import flowplug.cli
from flowplug.cli import main
from flowplug.data import load_dataset
from flowplug.train import CheckpointError, TrainConfig, Trainer, build_model, load_checkpoint, save_checkpoint, state

HOSTILE = ["os:system", "evil_mod", "evil_mod:payload", "this", "this:s"]
OWN_DEPENDENCIES = {"flowplug", "torch", "numpy", "normflows", "torchdiffeq", "PIL", "lightning_utilities", "tqdm"}
"""What flowplug itself may load lazily while it reads a file (torch imports some of its modules on first use)."""
GLOW = {"type": "glow", "image_shape": [1, 8, 8], "levels": 1, "depth": 1, "hidden_channels": 4}


@pytest.fixture
def hostile_cwd(tmp_path, monkeypatch):
    """A working directory (also on ``sys.path``) holding ``evil_mod.py``, which leaves a marker on import."""
    marker = tmp_path / "imported.marker"
    (tmp_path / "evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef payload(*args, **kwargs):\n    open({str(marker)!r}, 'w').close()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("evil_mod", "this"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = set(sys.modules)
    yield tmp_path
    new = {name.split(".")[0] for name in set(sys.modules) - before}
    assert new <= OWN_DEPENDENCIES, f"loading imported {sorted(new - OWN_DEPENDENCIES)}"
    assert "evil_mod" not in sys.modules and "this" not in sys.modules
    assert not marker.exists(), "evil_mod was imported"


@pytest.fixture(scope="module")
def good_state():
    data = load_dataset("digits")
    trainer = Trainer(flowplug.build(GLOW), TrainConfig(steps=1, progress=False), device="cpu")
    return state.checkpoint_of(trainer, data.info())


def _write(checkpoint, folder, name, *, objective=None, component=None):
    """A copy of a good checkpoint whose trainer config names ``objective`` or whose model is ``component``."""
    checkpoint = copy.deepcopy(checkpoint)
    if objective is not None:
        checkpoint.trainer_config.update(objective=objective, phases=None)  # a one-phase plan of that objective
    if component is not None:
        checkpoint.model_config = {**GLOW, "type": component}
    return save_checkpoint(checkpoint, folder / f"{name.replace(':', '_')}.pt")


REGISTER = r"register.*flowplug\.register\(name, factory, kind=\.\.\.\).*'flowplug\.components' entry point"


@pytest.mark.parametrize("name", HOSTILE)
def test_a_checkpoint_naming_an_unregistered_objective_imports_nothing(name, hostile_cwd, good_state, capsys):
    path = _write(good_state, hostile_cwd, name, objective=name)
    refused = rf"its trainer_config is not valid: unknown objective {name!r}.*{REGISTER}"
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(path)  # every command's load refuses it, before anything is built
    written = {**good_state.trainer_config, "objective": name, "phases": None}
    with pytest.raises(ValueError, match=rf"unknown objective {name!r}.*{REGISTER}"):
        TrainConfig.from_dict(written)
    with pytest.raises(ValueError, match=rf"unknown objective {name!r}"):
        TrainConfig.from_dict({**written, "objective": {"type": name}})
    with pytest.raises(ValueError, match=rf"unknown objective {name!r}"):
        TrainConfig.from_dict({**written, "objective": None, "phases": [{"objective": name}]})
    for command in (["sample", str(path), "--out", str(hostile_cwd / "s.png")], ["evaluate", str(path)]):
        assert main([*command, "--device", "cpu"]) == 2
        assert re.search(rf"flowplug: error: .*unknown objective {re.escape(repr(name))}", capsys.readouterr().err)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_checkpoint_or_config_naming_an_unregistered_component_imports_nothing(name, hostile_cwd, good_state,
                                                                                 capsys):
    path = _write(good_state, hostile_cwd, name, component=name)
    with pytest.raises(ValueError, match=rf"unknown component {name!r}.*{REGISTER}"):
        build_model(load_checkpoint(path))
    nested = {**GLOW, "type": "mrcnf", "levels": 1, "level_flows": [[{"type": name}]]}
    nested.pop("depth"), nested.pop("hidden_channels")
    with pytest.raises(ValueError, match=rf"unknown component {name!r}"):
        flowplug.build(nested)
    for command in (["sample", str(path)], ["evaluate", str(path)]):
        assert main([*command, "--device", "cpu"]) == 2
        assert f"flowplug: error: unknown component {name!r}" in capsys.readouterr().err
    config = hostile_cwd / "config.json"
    for content in ({"model": {**GLOW, "type": name}},
                    {"model": GLOW, "train": {"objective": name, "steps": 1}}):
        config.write_text(json.dumps(content))
        assert main(["train", "--config", str(config), "--no-progress", "--out", str(hostile_cwd / "run")]) == 2
        assert "flowplug: error: unknown" in capsys.readouterr().err


def test_registered_names_still_load(hostile_cwd, good_state):
    """The same path accepts what the user's code registered (the way to load a custom objective)."""

    @flowplug.register("user_objective", kind="objective")
    def user_objective(model, batch):
        return -model.log_prob(batch.v).mean(), {}

    try:
        path = _write(good_state, hostile_cwd, "ok", objective={"type": "user_objective"})
        written = {**load_checkpoint(path).trainer_config, "phases": None}
        assert TrainConfig.from_dict(written).objective == {"type": "user_objective"}
    finally:
        from flowplug.registry import _registry

        del _registry["user_objective"]
