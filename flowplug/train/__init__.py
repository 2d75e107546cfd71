"""The shared training API: :class:`Trainer`, its :class:`TrainConfig`, objectives, checkpoints and growth."""

from flowplug.train.checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint, save_checkpoint
from flowplug.train.combine import combine_level_checkpoints
from flowplug.train.config import TrainConfig
from flowplug.train.devices import resolve_device
from flowplug.train.evaluation import count_nfe, evaluate
from flowplug.train.growth import load_parent, parent_checkpoint
from flowplug.train.objectives import get_objective, objective_spec, objectives
from flowplug.train.trainer import Trainer

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "build_model",
    "combine_level_checkpoints",
    "count_nfe",
    "evaluate",
    "get_objective",
    "load_checkpoint",
    "load_parent",
    "objective_spec",
    "objectives",
    "parent_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
