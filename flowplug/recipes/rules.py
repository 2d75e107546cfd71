"""The rules that fit a recipe to a data set: each reads a summary of the data and decides one setting.

A recipe's ``"adapt"`` entry names the rules it takes, with their parameters, in the order they decide. A rule
reads the data's summary, the trainer options the run will have (the recipe's, with the user's over them: the
budget among them) and the model spec as far as it is decided (:class:`RuleInputs`). Every decision is recorded
(value and reason) in the run's ``config.json``, and a setting the user gives is never decided: the rule is
skipped.

- ``levels``: the number of resolution levels. ``family="mrcnf"``: as many as keep the coarsest image at least
  8 pixels a side (at most ``max``): 3 for 32×32, 2 for 28×28 (measured on MNIST at 10 CPU-minutes, three levels
  of 7×7 coarsest images cost 0.18 bits/dim against two). ``family="multiscale"`` (Glow, RealNVP, which squeeze
  once per level): as many as keep the last squeezed image at least 4 pixels a side. Images under 16 pixels a
  side (the embedded 8×8 digits) go down to 2 pixels.
- ``coarser_levels``: an MRCNF of 2 to ``max_levels`` levels, on images of 16 pixels a side or more, gives its
  coarser levels these net options over the recipe's (the ``mrcnf`` recipe: width 32 instead of 64 for two-level
  models). With two levels (28×28 images) the coarse level's net runs at the finest level's resolution, so it
  costs as much per step and holds fewer of the bits: at 10 CPU-minutes width 32 took 1.46× (MNIST) and 1.38×
  (Fashion-MNIST) the flow-matching steps and scored 0.025 and 0.014 bits/dim better, the coarse level's share
  within 0.011 of the wider net's. With three levels (CIFAR-10) the coarser levels run at a quarter of the finest
  level's pixels: width 32 took 1.23× the steps and tied (3.9409 against 3.9409), the finest level's gain spent on
  the coarser levels' losses.
- ``coarsest_evaluation``: an MRCNF of ``min_levels`` levels or more, on images of 16 pixels a side or more,
  evaluates its coarsest level at ``tolerance`` (the recipe's solver otherwise). That level holds a sixteenth of
  the dimensions of a three-level model's images, and on the 60-minute CIFAR-10 model its solve took the most
  evaluations of the three (dopri5 3e-3, finest first: 32 / 32 / 50 on the last batch of its 1,000 held-out
  images); at 1e-2 the model took 96 evaluations per image instead of 112 and its score moved by 0.0001 (0.0044 above
  dopri5 1e-5's score instead of 0.0043). The 10-minute model took 93 instead of 90 (0.0017 and 0.0016 above
  1e-5). Not for two levels: on MNIST's 28×28 model the coarse 14×14 level holds a quarter of the dimensions,
  and 1e-2 there moved the score by 0.0032 for 6 of 64 evaluations (250 images).
- ``finest_sampling``: an MRCNF of ``min_levels`` levels or more, on images of 16 pixels a side or more,
  samples its finest level on ``steps`` steps of the recipe's sampler (the others keep theirs). On three levels the
  finest level's tensor is four times the middle level's, so its steps cost the most, and in sampling it errs the
  least: on the 10- and 60-minute CIFAR-10 models two steps there (four on the others) took 0.65–0.73× the time
  of four everywhere, 3.5× Glow's instead of 4.9–5.2× on a 2-core Xeon, with a mean pixel error against dopri5
  1e-5's images from the same latents of 0.0031 and 0.0058 instead of 0.0026 and 0.0027 (the adaptive sampler
  the recipe had before, dopri5 3e-3: 0.0065 and 0.0057); two steps everywhere 0.0090 and 0.0152.
  Not for two levels: on the 28×28 MNIST and Fashion-MNIST models the finest level holds the strokes' edges and
  two steps there erred 0.0093 and 0.0094 against 0.0018 and 0.0043.
- ``detail_stretch``: images with flat backgrounds — at least a quarter of the pixels in the lowest or highest
  intensity bin (MNIST ~0.8, Fashion-MNIST ~0.5, CIFAR-10 ~0.01) — get the detail levels' asinh stretch at one
  bin's width (``1 / n_bins``), which widens the point mass flat regions put at 0. Only for 8-bit data
  (``n_bins >= 256``): on the 17-level digits it cost 0.21 bits/dim.
- ``flat_backgrounds``: 8-bit images with flat backgrounds (as for ``detail_stretch``) take these training
  settings instead; for RealNVP the rate 1e-3 instead of 2e-3. With unbounded coupling scales RealNVP diverged
  on MNIST at 2e-3 and 4e-3 (batch 16) and trained at 1e-3 (1.740 bits/dim at 10 CPU-minutes); with the
  recipe's soft bound on the scales it trained at 2e-3 as well, to 1.812 in about the same steps (1,624 against
  1,645). On CIFAR-10, 2e-3 was 0.057 bits/dim better than 4e-3.
- ``bin_warp``: 8-bit data get the edge-bin warp (``power``, ``n_bins`` of the data), which lets black and
  saturated pixels' noise density vanish at the bin edges (MNIST −0.13 bits/dim; neutral on CIFAR-10 and
  Fashion-MNIST). Not for coarser quantisation (on the 17-level digits: +0.27).
- ``small_images``: images under 16 pixels a side (the embedded 8×8 digits) take these training settings instead:
  for MRCNF the default job's measured settings (batch 128, rate 2e-3, flow matching alone: a likelihood step
  at batch 128 costs more than ten flow-matching steps there). The settings of the 8-bit recipes were measured on
  28×28 and 32×32 images of 2,000 to 10,000 images; RealNVP keeps its earlier batch 64 and rate 1e-3 there.
- ``short_budgets``: a time budget under ``below_minutes`` (and no step or epoch budget) takes these training
  settings instead; for MRCNF flow matching alone. A likelihood step cost 27 to 48 flow-matching steps there, so
  the last 35 % of a 2.5-minute budget bought 11 to 15 of them, and the steps it gave up were worth more: flow
  matching alone was 0.019 (MNIST), 0.005 (Fashion-MNIST) and 0.037 (CIFAR-10) bits/dim better at 2.5
  CPU-minutes. At 5 minutes the phase gained 0.031 on MNIST and lost 0.026 on CIFAR-10 and 0.005 on
  Fashion-MNIST, so budgets from 5 minutes on keep it. Minutes of a 2-core AMD EPYC, one thread each: a faster
  machine buys more steps per minute.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flowplug.data import ImageData

__all__ = ["RULES", "DataSummary", "Decision", "RuleInputs", "summarize"]

FLAT_BACKGROUND_SHARE = 0.25
"""The share of pixels in the lowest or highest bin from which images count as having flat backgrounds."""
SMALL_IMAGE = 16
"""Images with a side under this many pixels take a recipe's ``small_images`` training settings."""


@dataclass(frozen=True)
class DataSummary:
    """What the rules read of a data set."""

    image_shape: tuple[int, int, int]
    n_bins: int
    num_images: int
    edge_share: float
    """The share of pixels in the lowest or highest intensity bin."""

    @classmethod
    def of(cls, data: ImageData) -> DataSummary:
        x = data.x
        edge = ((x == 0) | (x == data.n_bins - 1)).sum().item() / max(1, x.numel())
        return cls(tuple(data.image_shape), data.n_bins, len(data), round(edge, 4))

    @property
    def small(self) -> bool:
        """Whether the images are under :data:`SMALL_IMAGE` pixels a side."""
        return min(self.image_shape[1:]) < SMALL_IMAGE

    @property
    def size(self) -> str:
        """The images' ``HxW``, for a decision's reason."""
        return f"{self.image_shape[1]}x{self.image_shape[2]}"


summarize = DataSummary.of


@dataclass(frozen=True)
class RuleInputs:
    """What a rule reads: the data's summary, the run's trainer options (the recipe's with the user's over them,
    before the rules) and the model spec as far as it is decided (the recipe's, the decisions of the rules before
    this one, the user's model options over them)."""

    data: DataSummary
    train: Mapping[str, Any]
    model: Mapping[str, Any]


@dataclass(frozen=True)
class Decision:
    """One setting a rule chose: ``part`` (``"model"`` or ``"train"``), ``key``, ``value`` and the reason."""

    part: str
    key: str
    value: Any
    why: str


def _levels(given: RuleInputs, family: str = "mrcnf", max: int = 3) -> list[Decision]:
    data = given.data
    side, small = min(data.image_shape[1:]), data.small
    coarsest = 2 if small else (8 if family == "mrcnf" else 4)
    # MRCNF with S levels halves S - 1 times; a multiscale flow with L levels squeezes L times
    halvings = (lambda s: s - 1) if family == "mrcnf" else (lambda s: s)
    best = 1
    for levels in range(1, max + 1):
        factor = 2 ** halvings(levels)
        if all(n % factor == 0 for n in data.image_shape[1:]) and side // factor >= coarsest:
            best = levels
    kind = "coarsest image" if family == "mrcnf" else "last squeezed image"
    why = f"the most levels (at most {max}) that keep the {kind} at least {coarsest} pixels a side"
    return [Decision("model", "levels", best, why + (" (images under 16 pixels a side)" if small else ""))]


def _flat_backgrounds_reason(data: DataSummary) -> str | None:
    """Why 8-bit images count as having flat backgrounds, or ``None`` if they do not."""
    if data.n_bins < 256 or data.edge_share < FLAT_BACKGROUND_SHARE:
        return None
    return f"flat backgrounds: {data.edge_share:.0%} of the pixels in the lowest or highest bin"


def _detail_stretch(given: RuleInputs) -> list[Decision]:
    why = _flat_backgrounds_reason(given.data)
    return [] if why is None else [Decision("model", "detail_stretch", 1 / given.data.n_bins, why)]


def _flat_backgrounds(given: RuleInputs, **settings: Any) -> list[Decision]:
    why = _flat_backgrounds_reason(given.data)
    return [] if why is None else _train_settings(settings, why)


def _bin_warp(given: RuleInputs, power: float) -> list[Decision]:
    n_bins = given.data.n_bins
    if n_bins < 256:
        return []
    return [Decision("model", "bin_warp", {"power": power, "n_bins": n_bins},
                     f"{n_bins}-level data: warp the edge bins' dequantisation noise")]


def _train_settings(settings: Mapping[str, Any], why: str) -> list[Decision]:
    return [Decision("train", key, value, why) for key, value in settings.items()]


def _small_images(given: RuleInputs, **settings: Any) -> list[Decision]:
    if not given.data.small:
        return []
    return _train_settings(settings, f"images of {given.data.size}, under {SMALL_IMAGE} pixels a side")


def _coarser_levels(given: RuleInputs, max_levels: int, **net_options: Any) -> list[Decision]:
    levels, shared = given.model.get("levels", 1), given.model.get("net_options")
    if not 2 <= levels <= max_levels or given.data.small or not isinstance(shared, Mapping):
        return []
    coarser = {**shared, **net_options}
    why = (f"images of {given.data.size}: the finest level's net keeps "
           f"{json.dumps(dict(shared))}, the {levels - 1} coarser levels' take {json.dumps(net_options)}")
    return [Decision("model", "net_options", [dict(shared)] + [dict(coarser) for _ in range(levels - 1)], why)]


def _one_level_solver(given: RuleInputs, key: str, min_levels: int, level: int, change: Mapping[str, Any],
                      why: str) -> list[Decision]:
    """The model's solver ``key`` per level, level ``level`` (``-1``: the coarsest) with ``change`` over the
    recipe's: for an MRCNF of ``min_levels`` levels or more on images of 16 pixels a side or more."""
    levels, shared = given.model.get("levels", 1), given.model.get(key)
    if levels < min_levels or given.data.small or not isinstance(shared, Mapping):
        return []
    solvers = [dict(shared) for _ in range(levels)]
    solvers[level] = {**shared, **change}
    return [Decision("model", key, solvers, f"{levels} levels on images of {given.data.size}: {why}")]


def _coarsest_evaluation(given: RuleInputs, min_levels: int, tolerance: float) -> list[Decision]:
    return _one_level_solver(given, "eval_solver", min_levels, -1, {"atol": tolerance, "rtol": tolerance},
                             f"the coarsest level, a sixteenth or less of the dimensions, evaluates at tolerance "
                             f"{tolerance:g}")


def _finest_sampling(given: RuleInputs, min_levels: int, steps: int) -> list[Decision]:
    return _one_level_solver(given, "sample_solver", min_levels, 0, {"steps": steps},
                             f"the finest level, whose steps cost the most and err the least, samples on {steps} "
                             f"steps")


def _short_budgets(given: RuleInputs, below_minutes: float, **settings: Any) -> list[Decision]:
    train = given.train
    if train.get("minutes") is None or train["minutes"] >= below_minutes or any(
            train.get(budget) is not None for budget in ("steps", "epochs")):
        return []
    return _train_settings(settings, f"a budget of {train['minutes']:g} minutes, under {below_minutes:g}")


RULES: dict[str, Callable[..., list[Decision]]] = {
    "levels": _levels,
    "detail_stretch": _detail_stretch,
    "flat_backgrounds": _flat_backgrounds,
    "bin_warp": _bin_warp,
    "small_images": _small_images,
    "coarser_levels": _coarser_levels,
    "coarsest_evaluation": _coarsest_evaluation,
    "finest_sampling": _finest_sampling,
    "short_budgets": _short_budgets,
}
"""Rule name → ``rule(inputs, **parameters)`` returning its decisions (``inputs``: a :class:`RuleInputs`)."""
