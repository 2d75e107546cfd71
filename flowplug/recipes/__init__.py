"""Named recipes: a model spec and a training plan, stored as data (``flowplug/recipes/<name>.json``), fitted to a
data set by documented rules (:mod:`flowplug.recipes.rules`).

``flowplug train`` trains the ``mrcnf`` recipe unless told otherwise, ``flowplug recipes`` lists them, the
benchmarks compare them; in Python::

    model, config = flowplug.recipe("mrcnf", data, train={"minutes": 10, "clock": "process"})
    flowplug.Trainer(model, config).fit(*data.split(0.1))

A recipe file holds ``description``, ``model`` (a registry spec without ``image_shape``), ``train``
(:class:`~flowplug.train.TrainConfig` options, with a default step budget), ``adapt`` (the rules it takes and
their parameters) and optionally ``conditional`` (``model`` settings that the recipe's class-conditional models —
given ``num_classes`` — take, and ``why``; recorded as decisions). Overrides: ``model`` keys replace the spec's
(and skip the rule or conditional setting that would decide them); ``train`` keys replace the options (a budget
given — ``steps``, ``epochs`` or ``minutes`` — replaces the recipe's budget whole).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from flowplug.data import ImageData
from flowplug.recipes.rules import RULES, DataSummary, RuleInputs
from flowplug.train.config import override_options

__all__ = ["DEFAULT_RECIPE", "RecipePlan", "load_recipe", "plan", "recipe", "recipes"]

DEFAULT_RECIPE = "mrcnf"


def recipes() -> list[str]:
    """The names of the recipes that ship with flowplug."""
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load_recipe(name: str) -> dict[str, Any]:
    """The stored recipe ``name`` (``ValueError`` naming the known ones for another name)."""
    known = recipes()
    if name not in known:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(known)} (`flowplug recipes` describes them)")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


@dataclass
class RecipePlan:
    """A recipe fitted to a data set: the model spec and trainer options to build, and why."""

    name: str
    model: dict[str, Any]
    train: dict[str, Any]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """What the rules decided: ``{"part", "key", "value", "why"}`` each."""
    overrides: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What ``config.json`` keeps of the recipe."""
        return {"name": self.name, "decisions": self.decisions, "overrides": self.overrides}

    def build(self) -> tuple[Any, Any]:
        """``(model, TrainConfig)``; the model's initialisation is seeded by the config's ``seed``."""
        import torch

        from flowplug.registry import build
        from flowplug.train.config import TrainConfig

        config = TrainConfig.from_dict(copy.deepcopy(self.train))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build(copy.deepcopy(self.model))
        return model, config


def plan(name: str, data: ImageData, *, model: Mapping[str, Any] | None = None,
         train: Mapping[str, Any] | None = None) -> RecipePlan:
    """Recipe ``name`` fitted to ``data`` (see the module docstring for ``model`` and ``train`` overrides)."""
    stored = load_recipe(name)
    model, train = dict(model or {}), dict(train or {})
    spec = {**stored["model"], "image_shape": list(data.image_shape)}
    options = dict(stored["train"])
    summary, run_options = DataSummary.of(data), override_options(options, train)
    decisions = []
    for rule, parameters in stored.get("adapt", {}).items():
        for decision in RULES[rule](RuleInputs(summary, run_options, {**spec, **model}), **parameters):
            given = model if decision.part == "model" else train
            if decision.key in given:
                continue
            (spec if decision.part == "model" else options)[decision.key] = decision.value
            decisions.append({"part": decision.part, "key": decision.key, "value": decision.value,
                              "why": decision.why})
    spec.update(model)
    if spec.get("num_classes") is not None:  # the recipe's settings for a class-conditional model
        conditional = stored.get("conditional", {})
        for key, value in conditional.get("model", {}).items():
            if key not in model:
                spec[key] = value
                decisions.append({"part": "model", "key": key, "value": value, "why": conditional["why"]})
    return RecipePlan(name, spec, override_options(options, train), decisions, {"model": model, "train": train})


def recipe(name: str, data: ImageData, *, model: Mapping[str, Any] | None = None,
           train: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """``(model, TrainConfig)`` of recipe ``name`` fitted to ``data``: :func:`plan` then
    :meth:`RecipePlan.build`. To record the recipe in the run folder, pass ``plan(...).record()`` to the
    :class:`~flowplug.train.Trainer` as ``recipe=``."""
    return plan(name, data, model=model, train=train).build()
