"""The contract between a model and the rest of flowplug (trainer, CLI, benchmarks): :class:`FlowModel`.

A model takes dequantised images ``v`` in ``[0, 1)`` of shape ``(B, *image_shape)`` (``docs/design.md`` §3) and
exposes normflows' model methods. Subclasses implement :meth:`~FlowModel.log_prob` and :meth:`~FlowModel.sample`;
every other method the trainer calls has a default here, so the trainer calls methods instead of probing for
attributes. ``config`` is a registry spec (``{"type": name, **kwargs}``) from which :func:`flowplug.build`
rebuilds an identical, untrained model; checkpoints store it.

A *conditional* model (:attr:`FlowModel.is_conditional`: ``num_classes`` or ``condition_dim`` set) scores and
samples given a condition ``y`` (class labels or vectors, :mod:`flowplug.condition`); every method below then
takes ``y`` and an unconditional model refuses one. Callers that serve both kinds (the trainer, evaluation) pass
``y`` only to conditional models (:func:`condition_kwargs`), so a subclass written before conditions existed
(``log_prob(self, v)``) keeps working.
"""

from __future__ import annotations

import copy
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from flowplug._checks import check_floating
from flowplug.bin_warp import EdgeBinWarp
from flowplug.cnf.flow import CNF, without_log_det
from flowplug.condition import check_condition
from flowplug.metrics import bits_per_dim, level_bits_per_dim

__all__ = ["FlowModel", "condition_kwargs", "constructor_spec"]


def constructor_spec(name: str, init: Callable[..., Any], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The registry spec ``{"type": name, ...}`` that rebuilds a model: every parameter of ``init`` (but ``self``)
    with its value in ``arguments`` (a constructor's ``locals()``), sequences stored as lists (plain data)."""
    spec: dict[str, Any] = {"type": name}
    for parameter in inspect.signature(init).parameters:
        if parameter != "self":
            value = arguments[parameter]
            spec[parameter] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
    return spec


def condition_kwargs(model: FlowModel, y: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """``{"y": y}`` for a conditional model, ``{}`` for an unconditional one (whose data's labels, if any, it
    does not use): the keyword arguments with which code serving both kinds calls the model's methods."""
    return {"y": y} if model.is_conditional else {}


def _given(y: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``y`` as a keyword argument when given: a model's own defaults pass it on, so that an unconditional
    model refuses a ``y`` and a conditional one misses it, each with its own message."""
    return {} if y is None else {"y": y}


class FlowModel(nn.Module, ABC):
    """Base class of flowplug's models (MRCNF, single-resolution CNF, Glow, RealNVP) and the trainer's contract.

    Required: ``image_shape`` ``(C, H, W)``, :meth:`log_prob`, :meth:`sample`. Defaults (override where the model
    has more to offer): one level (:meth:`level_log_probs`), no data-dependent initialisation, no flow-matching
    objective, no level-wise training; :attr:`is_continuous` finds CNFs among the submodules.
    """

    image_shape: tuple[int, int, int]
    config: dict[str, Any] | None = None
    """The registry spec that rebuilds the model (``None``: not rebuildable, e.g. built from modules)."""
    num_classes: int | None = None
    """The number of classes of a label-conditional model (labels ``0 … num_classes − 1``), else ``None``."""
    condition_dim: int | None = None
    """The length of the condition vector of a vector-conditional model, else ``None``."""
    bin_warp: EdgeBinWarp | None
    """An optional warp of the dequantisation noise of black and saturated pixels that models apply to ``v``
    first (:mod:`flowplug.bin_warp`); set by the models' ``bin_warp=`` option, ``None`` by default."""

    def __init__(self) -> None:
        super().__init__()
        self.bin_warp = None  # an instance attribute: a class-level default would hide the submodule once set

    @abstractmethod
    def log_prob(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(v)`` (``log p(v | y)`` for a conditional model) per sample, shape ``(B,)``, including every
        internal transform's log-determinant."""

    @abstractmethod
    def sample(
        self, num_samples: int = 1, temperature: float | None = None, y: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_samples`` images ``v`` and their ``log q(v)`` (given ``y``: one label for all, or one per
        sample, for a conditional model); ``temperature`` scales the base's std."""

    def sample_images(
        self, num_samples: int = 1, temperature: float | None = None, y: torch.Tensor | int | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """:meth:`sample`'s images without their ``log q``: the CNFs among the submodules integrate their state
        alone (:func:`flowplug.cnf.without_log_det`), one pass of the net per function evaluation instead of a pass
        and a vector-Jacobian product. ``options`` go to :meth:`sample` (e.g. ``guidance``). With a fixed-grid
        solver the images are :meth:`sample`'s from the same random state; an adaptive solver, which then controls
        the images' error alone, may take other steps, within its tolerance. Models without a CNF sample as
        :meth:`sample` does."""
        with without_log_det(self):
            v, _ = self.sample(num_samples, temperature, **_given(y), **options)
        return v

    @property
    def can_guide(self) -> bool:
        """Whether :meth:`sample` takes ``guidance=w`` (classifier-free guidance); ``False`` unless a model says."""
        return False

    @property
    def is_conditional(self) -> bool:
        """Whether the model scores and samples given a condition ``y`` (:attr:`num_classes` or
        :attr:`condition_dim` set)."""
        return self.num_classes is not None or self.condition_dim is not None

    def check_condition(self, y: object, like: torch.Tensor) -> torch.Tensor | None:
        """``y`` checked for a batch ``like`` (:func:`flowplug.condition.check_condition`): ``None`` for an
        unconditional model, which refuses a ``y``; a conditional one needs it."""
        return check_condition(y, num_classes=self.num_classes, condition_dim=self.condition_dim,
                               batch_size=like.shape[0], like=like, owner=type(self).__name__)

    def sample_condition(self, num_samples: int, y: torch.Tensor | int | None) -> torch.Tensor | None:
        """The condition of ``num_samples`` samples: a single label ``y`` repeated, or ``y`` itself (checked),
        on the model's device; ``None`` for an unconditional model (which refuses a ``y``)."""
        reference = next(self.parameters(), None)
        like = torch.empty(num_samples, 0, dtype=reference.dtype if reference is not None else
                           torch.get_default_dtype(), device=reference.device if reference is not None else None)
        if isinstance(y, int) and not isinstance(y, bool) and self.num_classes is not None:
            y = torch.full((num_samples,), y, dtype=torch.int64, device=like.device)
        return self.check_condition(y, like)

    def level_log_probs(self, v: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-level terms of ``log p(v | y)`` (one for single-scale models), summing to :meth:`log_prob`."""
        return [self.log_prob(v, **_given(y))]

    def initialize_from_data(self, v: torch.Tensor) -> None:
        """Data-dependent initialisation from a batch of training images; models without any do nothing."""

    def level_flow_matching_losses(
        self, v: torch.Tensor, sigma: float = 1e-4, y: torch.Tensor | None = None, **options: Any
    ) -> list[torch.Tensor]:
        """Per-level mean flow-matching losses, for models whose flows are CNFs (see :class:`flowplug.MRCNF`);
        ``options`` (``coupling``, ``time_sampling``, ``time_options``) go to
        :meth:`flowplug.CNF.flow_matching_loss`."""
        raise NotImplementedError(
            f"{type(self).__name__} has no flow-matching objective; train it by likelihood"
        )

    def flow_matching_loss(
        self, v: torch.Tensor, sigma: float = 1e-4, y: torch.Tensor | None = None, **options: Any
    ) -> torch.Tensor:
        """The flow-matching objective: the sum over levels of :meth:`level_flow_matching_losses`."""
        return torch.stack(self.level_flow_matching_losses(v, sigma, **_given(y), **options)).sum()

    def check_levels(self, levels: Iterable[int]) -> list[int]:
        """``levels`` as a list if this model has each of them, else ``ValueError`` naming the first it lacks;
        changes nothing. Single-level models have no levels to name."""
        raise ValueError(f"trainable_levels needs a multi-level model, {type(self).__name__} has no levels")

    def set_trainable_levels(self, levels: Iterable[int] | None) -> None:
        """Train only ``levels`` and freeze the others (``None``: all); single-level models only accept ``None``."""
        if levels is not None:
            self.check_levels(levels)

    def frozen_levels(self) -> list[int]:
        """The levels none of whose parameters is trained (see :meth:`set_trainable_levels`); none here."""
        return []

    def trainable_log_prob(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(v | y)`` less the terms of :meth:`frozen_levels`, per sample: what the likelihood's gradient
        needs. A frozen level's term is a constant to the optimiser and would cost a pass (an ODE solve for a
        CNF level); without frozen levels this is :meth:`log_prob`."""
        return self.log_prob(v, **_given(y))

    @property
    def is_continuous(self) -> bool:
        """Whether the model integrates ODEs (holds a CNF): such models train in float32 by default."""
        return any(isinstance(module, CNF) for module in self.modules())

    def forward_kld(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Forward KL divergence up to a constant: the mean negative log-likelihood of the batch."""
        return -self.log_prob(v, **_given(y)).mean()

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    def bits_per_dim(self, v: torch.Tensor, n_bins: int = 256, y: torch.Tensor | None = None) -> torch.Tensor:
        """Bits per dimension per sample (``docs/design.md`` §3), given ``y`` for a conditional model."""
        return bits_per_dim(self.level_log_probs(v, **_given(y)), self.num_dims, n_bins)

    def level_bits_per_dim(self, v: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each level's share ``-log p_s / (D ln 2)`` of :meth:`bits_per_dim` (``D`` of the full image), per sample.

        They add up to :meth:`bits_per_dim` minus ``log2(n_bins)``: that constant belongs to the whole image.
        """
        return level_bits_per_dim(self.level_log_probs(v, **_given(y)), self.num_dims)

    def _warp_in(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction of :attr:`bin_warp`: ``v`` warped and ``log|dx/dv|`` per image (``v`` and zeros
        without a warp)."""
        if self.bin_warp is None:
            return v, torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        return self.bin_warp.inverse(v)

    def _warp_out(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction of :attr:`bin_warp`: images ``v`` from warped ones ``x`` and ``log|dv/dx|`` per
        image (so ``log q(v) = log q(x) − log|dv/dx|``)."""
        if self.bin_warp is None:
            return x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return self.bin_warp(x)

    def check_input(self, v: torch.Tensor) -> None:
        """Raise a ``ValueError``/``TypeError`` naming the problem unless ``v`` is a non-empty batch of this model's
        images of its parameters' dtype."""
        check_floating(v, "v")
        if v.ndim != 4 or tuple(v.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(v.shape)}"
            )
        if v.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} got an empty batch v of shape {tuple(v.shape)}; "
                             "pass at least one image")
        reference = next(self.parameters(), None)
        if reference is not None and reference.dtype != v.dtype:
            raise TypeError(
                f"v is {v.dtype} but {type(self).__name__}'s parameters are {reference.dtype}; convert one to the "
                f"other (v.to({reference.dtype}) or model.to({v.dtype}))"
            )
