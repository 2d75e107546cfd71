"""Assemble one multi-level model from levels trained in separate runs (separate checkpoints).

MRCNF's levels have disjoint parameters, so the joint loss separates and each level can be trained in
its own run (``TrainConfig.trainable_levels`` / ``flowplug train --levels``), in parallel processes or
machines; this module puts the trained levels back together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from flowplug.train.checkpoint import CheckpointError, build_model, load_checkpoint

__all__ = ["combine_level_checkpoints"]


def combine_level_checkpoints(
    parts: Sequence[tuple[str | Path, Iterable[int]]], *, use_ema: bool = True
) -> torch.nn.Module:
    """A model whose levels come from the given checkpoints: ``[(path, levels), ...]``.

    The model is rebuilt from the first checkpoint's config; every checkpoint must hold a model of the
    same config (apart from which levels it trained) and each level may come from one checkpoint only.
    ``use_ema`` takes the evaluated (EMA) weights where a checkpoint has them.
    """
    if not parts:
        raise ValueError("give at least one (checkpoint, levels) pair")
    states = [(Path(path), load_checkpoint(path), list(levels)) for path, levels in parts]
    first_path, first_state, _ = states[0]
    model = build_model(first_state)
    if not callable(getattr(model, "load_levels", None)):
        raise CheckpointError(f"{str(first_path)!r} holds a {type(model).__name__}, which has no levels")
    taken: dict[int, Path] = {}
    for path, state, levels in states:
        if state.model_config != first_state.model_config:
            raise CheckpointError(
                f"{str(path)!r} holds a model of another config than {str(first_path)!r}; only levels of "
                "identically configured models can be combined"
            )
        for s in levels:
            if s in taken:
                raise ValueError(f"level {s} is asked from both {str(taken[s])!r} and {str(path)!r}")
            taken[s] = path
        model.load_levels(state.weights(use_ema=use_ema), levels)
    return model

