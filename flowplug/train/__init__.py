"""The shared training API: :class:`Trainer`, its :class:`TrainConfig`, and checkpoints."""

from flowplug.train.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from flowplug.train.combine import combine_level_checkpoints
from flowplug.train.objectives import OBJECTIVES, get_objective
from flowplug.train.trainer import TrainConfig, Trainer, count_nfe, resolve_device

__all__ = [
    "OBJECTIVES",
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "build_model",
    "combine_level_checkpoints",
    "count_nfe",
    "get_objective",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
