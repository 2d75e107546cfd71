"""The multi-resolution CNF composite (MRCNF, docs/design.md §5).

An image ``v`` (dequantised, in ``[0, 1)``) is split by the Haar pyramid into the coarsest image ``x_{S-1}``
and detail tensors ``y_0`` (finest) … ``y_{S-2}``. The transform has log-determinant 0, so

    log p(v) = log p(x_{S-1}) + Σ_s log p(y_s | x_{s+1}).

Level ``s`` of the model (``model.levels[s]``, numbered as in ``docs/design.md`` §1) is a :class:`ResolutionLevel`:
a list of flow components over its tensor and a standard normal base. The detail levels ``s < S-1`` receive the
coarse image ``x_{s+1}`` (in the ``[0, 1)`` scale of ``v``) as ``context``; components that do not take ``context``
ignore it, so a level may mix CNFs with normflows' Glow blocks, couplings and ActNorm. The coarsest level first maps
``x_{S-1}`` through a logit (``logit(α + (1 − 2α) x)``) with its exact log-determinant.

A **conditional** MRCNF (``num_classes=K`` for class labels, ``condition_dim=k`` for given vectors) models
``p(v | y)``: every level, the coarsest included, has its own :class:`~flowplug.condition.ConditionEncoder` (a
learned label embedding, or the vector itself) whose features join the level's context as constant channels
after the coarse image; the coarsest level, which has no coarse image, gets them as its whole context. Then

    log p(v | y) = log p(x_{S-1} | y) + Σ_s log p(y_s | x_{s+1}, y)

(``docs/conditional.md``).

Because the levels' parameters are disjoint the loss separates: levels can be trained jointly
(:meth:`MRCNF.set_trainable_levels`), one at a time or in separate runs, and combined afterwards
(:meth:`MRCNF.load_levels`); :meth:`MRCNF.grow` adds a finer level for progressive training.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import normflows as nf
import torch
from torch import nn

from flowplug._checks import check_finite, check_floating, check_num_samples
from flowplug.asinh import AsinhStretch
from flowplug.bin_warp import EdgeBinWarp
from flowplug.cnf import CNF, Guidance, ResODENet, without_log_det
from flowplug.cnf.solver import DEFAULT_EVAL_SOLVER, DEFAULT_TRAIN_SOLVER, SolverSettings
from flowplug.condition import DEFAULT_EMBEDDING_DIM, ConditionEncoder, check_condition_options, spatial_features
from flowplug.conditioning import ComposedFlow, run_forward, run_inverse
from flowplug.distributions import StandardNormal
from flowplug.models.base import FlowModel
from flowplug.registry import build, get_component, register
from flowplug.standardize import Standardize
from flowplug.wavelet import haar_cascade, haar_pyramid, haar_reconstruct

__all__ = ["CNF_OPTIONS", "DEFAULT_NET", "LEVEL_OPTIONS", "MRCNF", "NET_OPTIONS", "PER_LEVEL_SOLVERS",
           "ResolutionLevel", "default_level_spec", "net_options_of"]

LevelFlows = Sequence[Mapping[str, Any] | str | nn.Module]


class ResolutionLevel(ComposedFlow):
    """One resolution level: ``flows`` (listed in the sampling direction) over tensors of ``shape``.

    ``context_shape`` is the shape of the context its flows get (``None`` for an unconditional coarsest level):
    the conditioning coarse image, followed, with a ``condition`` encoder, by its features as constant channels
    (:meth:`context_for`). In the density direction the level's tensor first goes through ``preprocess`` (the
    coarsest level's logit), then ``standardize`` (per-channel statistics from data), then the flows (last listed
    first): the level's :meth:`chain` is ``[*flows, standardize, preprocess]``.
    """

    def __init__(
        self,
        flows: Sequence[nn.Module],
        shape: Sequence[int],
        context_shape: Sequence[int] | None = None,
        preprocess: nn.Module | None = None,
        standardize: Standardize | None = None,
        condition: ConditionEncoder | None = None,
    ) -> None:
        super().__init__(flows)
        self.shape = tuple(shape)
        self.context_shape = None if context_shape is None else tuple(context_shape)
        self.preprocess = preprocess
        self.standardize = standardize
        self.condition = condition
        self.base = StandardNormal(self.shape)

    def context_for(
        self, coarse: torch.Tensor | None, y: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The context of the level's flows, of ``dtype``: the coarse image ``coarse`` (``None`` at the coarsest
        level) and, for a conditional level, the features of the checked condition ``y`` as constant channels
        after it."""
        if self.condition is None:
            return coarse
        if y is None:
            raise ValueError("this level is conditional and needs the condition y")
        features = spatial_features(self.condition(y), *self.shape[1:], dtype)
        return features if coarse is None else torch.cat([coarse, features], dim=1)

    def _preparation(self) -> list[nn.Module]:
        # sampling order: standardisation is undone before the preprocessing
        return [m for m in (self.standardize, self.preprocess) if m is not None]

    def chain(self) -> list[nn.Module]:
        return [*self.flows, *self._preparation()]

    @torch.no_grad()
    def initialize_standardization(self, x: torch.Tensor, overwrite: bool = False) -> None:
        """Set the standardisation statistics from a batch of this level's tensors (after preprocessing).

        Statistics already set (e.g. of a trained level) are kept unless ``overwrite``.
        """
        if self.standardize is None or (bool(self.standardize.initialized) and not overwrite):
            return
        prepared = x if self.preprocess is None else run_inverse([self.preprocess], x)[0]
        self.standardize.initialize(prepared)

    def single_cnf(self, purpose: str) -> CNF:
        """The level's one flow, a CNF, which ``purpose`` (e.g. ``"flow matching"``) needs; else ``ValueError``."""
        if len(self.flows) != 1 or not isinstance(self.flows[0], CNF):
            kinds = [type(f).__name__ for f in self.flows]
            raise ValueError(f"{purpose} needs a level made of exactly one CNF, this level holds {kinds}")
        return self.flows[0]

    def flow_matching_loss(
        self, x: torch.Tensor, context: torch.Tensor | None = None, sigma: float = 1e-4, **options: Any
    ) -> torch.Tensor:
        """Per-sample flow-matching loss of the level's CNF on its prepared tensor (the level must be one CNF)."""
        cnf = self.single_cnf("flow matching")
        prepared, _ = run_inverse(self._preparation(), x)
        return cnf.flow_matching_loss(prepared, context, sigma=sigma, **options)

    def inverse_and_log_det(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction: the level's tensor → its latent, with the log-determinant of that map."""
        return self.inverse(x, context)

    def forward_and_log_det(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: latent → the level's tensor, with the log-determinant of that map."""
        return self.forward(z, context)

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x | context)`` per sample."""
        z, log_det = self.inverse_and_log_det(x, context)
        return self.base.log_prob(z) + log_det

    def sample(
        self, num_samples: int, context: torch.Tensor | None = None, temperature: float | None = None,
        guidance: Guidance | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log q(x | context))``; ``temperature`` scales the base's standard deviation. With ``guidance``
        (the level must be one CNF) the CNF follows the guided field, and ``log q`` is the guided sampler's."""
        z, log_q = self.base.sample(num_samples, temperature)
        if guidance is None:
            x, log_det = self.forward_and_log_det(z, context)
        else:
            x, log_det = self.single_cnf("guided sampling")(z, context, guidance=guidance)
            x, prepared_log_det = run_forward(self._preparation(), x)
            log_det = log_det + prepared_log_det
        return x, log_q - log_det


def _keyword_options(factory: Any, taken: tuple[str, ...]) -> tuple[str, ...]:
    """The keyword parameters of ``factory`` other than ``taken`` (the ones the level fills in itself)."""
    return tuple(
        name for name, parameter in inspect.signature(factory).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name not in taken
    )


DEFAULT_NET = "res_odenet"
"""The default levels' ODE net (:class:`~flowplug.cnf.ResODENet`, of the ``mrcnf`` recipe)."""


_FILLED_BY_LEVEL = ("channels", "context_channels", "vector_context")
"""Net parameters a level sets itself (its tensor's channels, its context's channels, and how many of those are a
condition's per-sample features)."""


def net_options_of(net: str) -> tuple[str, ...]:
    """The level options that go to each level's net of registered type ``net`` (its keyword parameters)."""
    return _keyword_options(get_component(net, kind="net").factory, _FILLED_BY_LEVEL)


def _takes_vector_context(net: str) -> bool:
    return "vector_context" in inspect.signature(get_component(net, kind="net").factory).parameters


NET_OPTIONS = _keyword_options(ResODENet, _FILLED_BY_LEVEL)
"""Level options passed to each level's default net, :class:`~flowplug.cnf.ResODENet` (its defaults apply)."""
CNF_OPTIONS = _keyword_options(CNF, ("net",))
"""Level options passed to each level's :class:`~flowplug.CNF` (its defaults apply, except the solvers)."""
LEVEL_OPTIONS = ("cnfs_per_level", *NET_OPTIONS, *CNF_OPTIONS)
"""The level options of the default net (another ``net`` takes its own keyword parameters instead)."""
PER_LEVEL_SOLVERS = ("train_solver", "eval_solver", "sample_solver")
"""The level options that :class:`MRCNF` also takes as a list of one value per level (e.g. a looser evaluation
tolerance on the coarsest level)."""


def default_level_spec(
    channels: int,
    context_channels: int,
    *,
    cnfs_per_level: int = 1,
    net: str = DEFAULT_NET,
    net_options: Mapping[str, Any] | None = None,
    condition_features: int = 0,
    **options: Any,
) -> list[dict[str, Any]]:
    """The default of one level: ``cnfs_per_level`` conditional CNFs with ODE nets of type ``net``.

    Each net is given the level's ``channels`` and ``context_channels`` (the coarse image it is conditioned on,
    then ``condition_features`` constant channels of a conditional model's condition: a net with a
    ``vector_context`` parameter, as :class:`~flowplug.cnf.ResODENet`, joins those to its time embedding, another
    convolves them as channels) and starts at zero (identity flow). ``options`` go to the nets (the keyword
    parameters of ``net``, e.g. :data:`NET_OPTIONS` of the default) or the CNFs (:data:`CNF_OPTIONS`);
    ``net_options`` are further keyword arguments of the net (e.g. ``{"hidden_channels": 64, "num_blocks": 2}``
    for ``"res_odenet"``). What is not given takes those classes' own defaults, except the solvers, which default
    to the presets
    :data:`~flowplug.cnf.solver.DEFAULT_TRAIN_SOLVER` and :data:`~flowplug.cnf.solver.DEFAULT_EVAL_SOLVER`.
    """
    _check_level_options(options, net)
    net_keys = net_options_of(net)
    net_spec = {"type": net, "channels": channels, "context_channels": context_channels,
                **({"vector_context": condition_features} if condition_features and _takes_vector_context(net)
                   else {}),
                **{k: v for k, v in options.items() if k in net_keys}, **dict(net_options or {})}
    cnf: dict[str, Any] = {"type": "cnf", "net": net_spec, **{k: v for k, v in options.items() if k in CNF_OPTIONS}}
    for key, preset in (("train_solver", DEFAULT_TRAIN_SOLVER), ("eval_solver", DEFAULT_EVAL_SOLVER)):
        if cnf.get(key) is None:
            cnf[key] = preset.to_dict()
    return [copy.deepcopy(cnf) for _ in range(cnfs_per_level)]


def _is_plain_spec(level: LevelFlows) -> bool:
    return all(isinstance(item, (str, Mapping)) for item in level)


@register("mrcnf", kind="model")
class MRCNF(FlowModel):
    """Multi-resolution continuous normalizing flow over images of ``image_shape = (C, H, W)``.

    Args:
        image_shape: ``(C, H, W)``; H and W divisible by ``2 ** (levels - 1)``.
        levels: number of resolution levels ``S`` (1 is a single-resolution CNF with a logit).
        level_flows: optional list of ``S`` component lists, numbered as in ``docs/design.md`` §1 (0 = finest details,
            ``S-1`` = coarsest image), each listed in the sampling direction. Items are registry specs (the model
            then stays rebuildable from :attr:`config`) or modules. ``None`` entries (or ``level_flows=None``) take
            :func:`default_level_spec` with the options below.
        **level_options: options of the default CNF levels (:data:`LEVEL_OPTIONS`): ``cnfs_per_level=1``,
            the nets' options (``hidden_channels``, ``num_blocks``, ``activation``, ...) and the CNFs' (``T``,
            ``divergence``, ``probe``, ``train_solver``, ``eval_solver``, ``adjoint``, ``kinetic_energy``,
            ``jacobian_norm``, ...), with those classes' defaults; see :func:`default_level_spec`. The solvers
            (:data:`PER_LEVEL_SOLVERS`) may also be a list of one per level, numbered like ``level_flows`` (``None``
            entries take the default), e.g. ``eval_solver=[tight, tight, loose]`` to evaluate the coarsest of three
            levels at a looser tolerance.
        logit_alpha: the coarsest level's logit squeezes ``[0, 1]`` into ``[α, 1 − α]`` first.
        standardize: give every level a per-channel :class:`~flowplug.standardize.Standardize` (after the
            logit at the coarsest level), initialised by :meth:`initialize_from_data` or from the first
            training batch, with its exact log-determinant.
        net: registered name of the default levels' ODE net (``"res_odenet"``, the default: residual blocks with a
            time embedding and the context in every block, :class:`~flowplug.cnf.ResODENet`, as the ``mrcnf``
            recipe has; ``"conv_odenet"``: a plain convolutional net, the default of versions before 0.3).
        net_options: keyword arguments of that net, one dict for every level or a list of one dict (or ``None``)
            per level, numbered like ``level_flows`` (0 = finest details), e.g.
            ``[{"hidden_channels": 64, "num_blocks": 1}, {"hidden_channels": 64, "num_blocks": 2}]``.
        detail_stretch: if given, every detail level first maps its coefficients through
            :class:`~flowplug.asinh.AsinhStretch` of this scale (e.g. ``1/256``, the dequantisation width), with
            its exact log-determinant: it widens the point mass that flat image regions put at 0.
        bin_warp: if given, the keyword arguments of an :class:`~flowplug.bin_warp.EdgeBinWarp` (e.g.
            ``{"n_bins": 256}``) that first warps the dequantisation noise of black and saturated pixels, at full
            resolution and within their quantisation bins, so that its density vanishes smoothly at the bins'
            edges. Its exact log-determinant is counted in the finest level's term of :meth:`level_log_probs`.
        num_classes: condition every level on a class label ``0 … num_classes − 1`` (a learned embedding of
            ``embedding_dim`` features per level, default :data:`~flowplug.condition.DEFAULT_EMBEDDING_DIM`):
            :meth:`log_prob` is then ``log p(v | y)`` and every method takes the labels ``y``.
        condition_dim: condition every level on a given vector of this length instead (its entries are the
            features).
        label_dropout: with ``num_classes``, the probability with which flow matching replaces a training label
            by a learned *null* label, so that every level also learns its unconditional field; then
            :meth:`sample` and :meth:`super_resolve` take ``guidance=w`` (classifier-free guidance,
            :mod:`flowplug.cnf.guidance`). Likelihood training and :meth:`log_prob` always use the labels.

    The condition's features widen each default level's net context by their number (the coarsest level's
    net gets them as its only context; the default net adds them to its time embedding instead of convolving
    them, ``ResODENet(vector_context=...)``); nets of ``level_flows`` given as specs or modules must be built
    with that context size. ``config`` is the registry spec that rebuilds this model (``None`` when a level was
    given as modules).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int = 3,
        level_flows: Sequence[LevelFlows | None] | None = None,
        *,
        logit_alpha: float = 1e-3,
        standardize: bool = True,
        detail_stretch: float | None = None,
        bin_warp: Mapping[str, Any] | None = None,
        net: str = DEFAULT_NET,
        net_options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
        num_classes: int | None = None,
        condition_dim: int | None = None,
        embedding_dim: int | None = None,
        label_dropout: float = 0.0,
        **level_options: Any,
    ) -> None:
        super().__init__()
        check_condition_options(num_classes, condition_dim, embedding_dim)
        _check_label_dropout(label_dropout, num_classes)
        self.num_classes, self.condition_dim = num_classes, condition_dim
        self.label_dropout = float(label_dropout)
        self.image_shape = _check_image_shape(image_shape, levels)
        self.num_levels = levels
        if level_flows is not None and len(level_flows) != levels:
            raise ValueError(
                f"level_flows must hold one component list per level ({levels}), got {len(level_flows)}"
            )
        if not 0 < logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must lie in (0, 0.5), got {logit_alpha}")
        _check_level_options(level_options, net)
        per_level_net = _per_level_net_options(net_options, levels)
        per_level_solvers = {
            key: _per_level(level_options[key], levels, key, (Mapping, SolverSettings, str),
                            "a solver (settings, their dict or a method name)")
            for key in PER_LEVEL_SOLVERS if key in level_options
        }
        channels = self.image_shape[0]
        if bin_warp is not None:
            self.bin_warp = EdgeBinWarp(**bin_warp)
        condition = {"num_classes": num_classes, "condition_dim": condition_dim, "embedding_dim": embedding_dim}
        features = 0 if not self.is_conditional else condition_dim or embedding_dim or DEFAULT_EMBEDDING_DIM
        self.levels = nn.ModuleList()
        for s in range(levels):
            shape = self.level_shape(s)
            context_channels = (0 if s == levels - 1 else channels) + features
            context_shape = (context_channels, *shape[1:]) if context_channels else None
            given = None if level_flows is None else level_flows[s]
            if given is None:
                given = default_level_spec(shape[0], context_channels, net=net, net_options=per_level_net[s],
                                           condition_features=features,
                                           **{**level_options, **{k: v[s] for k, v in per_level_solvers.items()}})
            flows = [build(item) if isinstance(item, (str, Mapping)) else item for item in given]
            preprocess = nf.transforms.Logit(alpha=logit_alpha) if s == levels - 1 else None
            if preprocess is None and detail_stretch is not None:  # issue 11: point masses of flat regions
                preprocess = AsinhStretch(detail_stretch)
            standardizer = Standardize(shape[0]) if standardize else None
            encoder = ConditionEncoder(**condition, null_class=self.can_guide) if self.is_conditional else None
            self.levels.append(ResolutionLevel(flows, shape, context_shape, preprocess, standardizer, encoder))
        rebuildable = level_flows is None or all(lf is None or _is_plain_spec(lf) for lf in level_flows)
        self.config: dict[str, Any] | None = (
            {
                "type": "mrcnf",
                "image_shape": list(self.image_shape),
                "levels": levels,
                "level_flows": None if level_flows is None else [
                    None if lf is None else [copy.deepcopy(item) for item in lf] for lf in level_flows
                ],
                **copy.deepcopy(level_options),
                "logit_alpha": logit_alpha,
                "standardize": standardize,
                # written only when set, so configs of older versions (which lack them) rebuild unchanged
                **({} if detail_stretch is None else {"detail_stretch": detail_stretch}),
                **({} if bin_warp is None else {"bin_warp": dict(bin_warp)}),
                "net": net,
                **({} if net_options is None else {"net_options": copy.deepcopy(
                    dict(net_options) if isinstance(net_options, Mapping) else
                    [None if o is None else dict(o) for o in net_options])}),
                **{key: value for key, value in condition.items() if value is not None},
                **({"label_dropout": label_dropout} if label_dropout else {}),
            }
            if rebuildable
            else None
        )

    # ----------------------------------------------------------------------------------------------- shapes
    def level_shape(self, s: int) -> tuple[int, int, int]:
        """Shape of level ``s``'s tensor: ``y_s`` ``(3C, H/2^(s+1), W/2^(s+1))``, or the coarsest image."""
        channels, height, width = self.image_shape
        if s == self.num_levels - 1:
            factor = 2**s
            return channels, height // factor, width // factor
        factor = 2 ** (s + 1)
        return 3 * channels, height // factor, width // factor

    def level_context_shape(self, s: int) -> tuple[int, int, int]:
        """Shape of the coarse image ``x_{s+1}`` that conditions detail level ``s``."""
        channels, height, width = self.image_shape
        factor = 2 ** (s + 1)
        return channels, height // factor, width // factor

    # -------------------------------------------------------------------------------------------- likelihood
    def decompose(self, v: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([y_0, …, y_{S-2}], x_{S-1})`` of ``v`` (finest details first)."""
        return haar_pyramid(v, self.num_levels)

    def level_log_probs(self, v: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``[log p(y_0 | x_1), …, log p(y_{S-2} | x_{S-1}), log p(x_{S-1})]`` (each also given the condition
        ``y`` of a conditional model); they sum to :meth:`log_prob`."""
        warped, warp_log_det = self._warped(v)
        terms = self._log_probs_of(warped, range(self.num_levels), self.check_condition(y, v))
        terms[0] = terms[0] + warp_log_det
        return terms

    def _log_probs_of(self, warped: torch.Tensor, levels: Iterable[int], y: torch.Tensor | None
                      ) -> list[torch.Tensor]:
        """The terms ``log p_s`` of ``levels`` (in level order) for warped images given the checked condition
        ``y``; other levels are not solved."""
        chosen = set(levels)
        return [
            level.log_prob(x, context)
            for s, (level, (x, context)) in enumerate(zip(self.levels, self._cascade(warped, y), strict=True))
            if s in chosen
        ]

    def log_prob(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(v)`` per sample, ``log p(v | y)`` for a conditional model (the Haar transform adds nothing:
        its log-determinant is 0)."""
        return torch.stack(self.level_log_probs(v, y)).sum(0)

    def trainable_log_prob(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(v | y)`` without the terms of frozen levels, whose solves are skipped (see
        :meth:`FlowModel.trainable_log_prob`); the warp's log-determinant, a constant, is kept."""
        warped, log_det = self._warped(v)
        y = self.check_condition(y, v)
        trained = set(range(self.num_levels)) - set(self.frozen_levels())
        if not trained:
            raise ValueError("every level of this MRCNF is frozen: there is no likelihood term to train")
        return torch.stack(self._log_probs_of(warped, trained, y)).sum(0) + log_det

    def inverse_and_log_det(
        self, v: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Density direction: ``v`` → latents ``[z_0, …, z_{S-1}]`` (index = level) and the total log-det,
        given the condition ``y`` of a conditional model."""
        warped, log_det = self._warped(v)
        latents = []
        for level, (x, context) in zip(self.levels, self._cascade(warped, self.check_condition(y, v)), strict=True):
            z, step = level.inverse_and_log_det(x, context)
            latents.append(z)
            log_det = log_det + step
        return latents, log_det

    def forward_and_log_det(
        self, latents: Sequence[torch.Tensor], y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction: latents ``[z_0, …, z_{S-1}]`` → image ``v`` and the total log-det, given the
        condition ``y`` of a conditional model."""
        if len(latents) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} latents (one per level), got {len(latents)}")
        y = self.check_condition(y, latents[-1])
        coarsest = self.levels[-1]
        x, log_det = coarsest.forward_and_log_det(latents[-1], coarsest.context_for(None, y, latents[-1].dtype))
        for s in range(self.num_levels - 2, -1, -1):
            details, step = self.levels[s].forward_and_log_det(latents[s], self.levels[s].context_for(x, y, x.dtype))
            x = haar_reconstruct(x, details)
            log_det = log_det + step
        v, step = self._warp_out(x)
        return v, log_det + step

    def _level_inputs(
        self, v: torch.Tensor, y: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(tensor, context)`` of every level for images ``v``, after the input checks: ``(y_s, x_{s+1})``
        for the detail levels — each coarse image is the one the transform produced from ``v`` (after the
        ``bin_warp``, if any) — and ``(x_{S-1}, None)`` for the coarsest; with the (checked) condition ``y``
        of a conditional model the contexts hold its features too (:meth:`ResolutionLevel.context_for`)."""
        return self._cascade(self._warped(v)[0], y)

    def _warped(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``v`` (shape and dtype checked) after the bin warp (if any), and its log-determinant per image."""
        self.check_input(v)
        return self._warp_in(v)

    def _cascade(
        self, v: torch.Tensor, y: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(y_s, context_s)`` of every detail level and ``(x_{S-1}, context)`` of the coarsest, after checking
        that the coarsest image lies in :meth:`support`'s bounds (one vectorised check, one host
        synchronisation). The contexts are the coarse images ``x_{s+1}`` (``None`` for the coarsest level), joined
        by the features of the checked condition ``y`` where it is given (a caller that uses only the levels'
        tensors, as :meth:`initialize_from_data`, leaves it out)."""
        steps = haar_cascade(v, self.num_levels)
        coarsest = steps[-1][1] if steps else v
        self._check_support(coarsest, v)
        pairs = [*steps, (coarsest, None)]
        if y is None:
            return pairs
        return [(x, level.context_for(c, y, v.dtype)) for level, (x, c) in zip(self.levels, pairs, strict=True)]

    def support(self) -> tuple[float, float]:
        """The open interval that every pixel of the coarsest image (the ``2^(S−1)``-pixel block means of ``v``)
        must lie in for :meth:`log_prob`: the domain ``(−α/(1 − 2α), (1 − α)/(1 − 2α))`` of the coarsest level's
        logit. The details are unbounded, so the model's density lives on every image whose block means lie
        there, including images with pixels outside ``[0, 1]``: :meth:`sample` draws such images at times, and
        ``log_prob`` scores them (``log_prob(sample()[0])`` equals the sample's ``log q``). Images in ``[0, 1]``
        always lie in the support; the mass outside ``[0, 1]`` is lost to data, so bits per dimension on data
        are those of a density that integrates to less than 1 there (an upper bound, as with any leak)."""
        alpha = self.levels[-1].preprocess.alpha
        return -alpha / (1 - 2 * alpha), (1 - alpha) / (1 - 2 * alpha)

    def _check_support(self, coarsest: torch.Tensor, v: torch.Tensor) -> None:
        low, high = self.support()
        lo, hi = torch.stack(torch.aminmax(coarsest.detach())).tolist()
        if low < lo and hi < high:
            return
        check_finite(v, "v")
        raise ValueError(
            f"v's coarsest image ({coarsest.shape[-2]}x{coarsest.shape[-1]} block means) holds values in "
            f"[{lo:.4g}, {hi:.4g}], outside the model's support ({low:.6g}, {high:.6g}), the domain of the "
            "coarsest level's logit; images in [0, 1] always lie in it (flowplug's models expect dequantised "
            "images v = (x + u) / n_bins in [0, 1))"
        )

    @torch.no_grad()
    def initialize_from_data(self, v: torch.Tensor, overwrite: bool = False) -> None:
        """Set the levels' standardisation from a (large) batch of training images ``v``.

        Levels whose statistics are already set (trained, loaded or initialised before) keep them
        unless ``overwrite``, so the trainer's first-batch initialisation never disturbs trained levels.
        """
        for level, (x, _) in zip(self.levels, self._level_inputs(v), strict=True):
            level.initialize_standardization(x, overwrite)

    def level_flow_matching_losses(
        self, v: torch.Tensor, sigma: float = 1e-4, y: torch.Tensor | None = None, **options: Any
    ) -> list[torch.Tensor]:
        """Per-level mean flow-matching losses (each level must be one CNF); see :mod:`flowplug.cnf.flow_matching`.
        ``options`` (``coupling``, ``time_sampling``, ``time_options``) go to
        :meth:`flowplug.CNF.flow_matching_loss`. A frozen level (no parameter requires a gradient, see
        :meth:`set_trainable_levels`, e.g. the old levels after :meth:`grow`) is not computed: its term is 0.
        A conditional model regresses given ``y``; with class labels the ``"ot"`` coupling pairs data and
        noise within each class only (:mod:`flowplug.cnf.coupling`); with ``label_dropout`` each label is replaced
        by the null label with that probability (the pairing still keeps to the true classes)."""
        warped = self._warped(v)[0]
        y = self.check_condition(y, v)
        if self.num_classes is not None:
            options = {**options, "groups": y}
        if self.label_dropout:
            dropped = torch.rand(y.shape, device=y.device) < self.label_dropout  # type: ignore[union-attr]
            y = torch.where(dropped, self.levels[0].condition.null_labels(y), y)  # type: ignore[union-attr]
        frozen = set(self.frozen_levels())
        return [
            x.new_zeros(()) if s in frozen else level.flow_matching_loss(x, context, sigma, **options).mean()
            for s, (level, (x, context)) in enumerate(zip(self.levels, self._cascade(warped, y), strict=True))
        ]

    # -------------------------------------------------------------------------------------------- sampling
    @property
    def can_guide(self) -> bool:
        """Whether :meth:`sample` takes ``guidance`` (a class-conditional model trained with ``label_dropout``)."""
        return self.label_dropout > 0

    def sample(
        self, num_samples: int = 1, temperature: float | None = None, y: torch.Tensor | int | None = None,
        guidance: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample coarse to fine: ``(v, log q(v))``; ``temperature`` scales every level's base std. A conditional
        model samples given ``y``: one label for every sample (an ``int``) or one label (vector) per sample;
        ``log q`` is then ``log q(v | y)``. ``guidance=w ≠ 0`` (a model with ``label_dropout``) samples every
        level along its classifier-free guided field (:mod:`flowplug.cnf.guidance`); ``log q`` is then the
        density of that guided sampler, not of the model."""
        check_num_samples(num_samples)
        y = self.sample_condition(num_samples, y)
        coarsest = self.levels[-1]
        dtype = coarsest.base._anchor.dtype  # the model's dtype (the base holds no parameter)
        x, log_q = coarsest.sample(num_samples, context=coarsest.context_for(None, y, dtype),
                                   temperature=temperature, guidance=self._guidance(coarsest, None, y, guidance, dtype))
        return self._refine(x, log_q, self.num_levels - 1, temperature, y, guidance)

    def _guidance(self, level: ResolutionLevel, coarse: torch.Tensor | None, y: torch.Tensor | None,
                  weight: float, dtype: torch.dtype) -> Guidance | None:
        """The guidance of ``level`` given ``coarse`` (``None`` at the coarsest level): ``None`` for ``weight``
        0, else ``weight`` against the context (of ``dtype``) of the null label."""
        if weight == 0:
            return None
        if not self.can_guide:
            raise ValueError("guidance needs a class-conditional MRCNF trained with label_dropout > 0 (its null "
                             "label is the unconditional field that guidance contrasts with)")
        return Guidance(weight, level.context_for(coarse, level.condition.null_labels(y), dtype))  # type: ignore

    def _refine(
        self, x: torch.Tensor, log_q: torch.Tensor, from_level: int, temperature: float | None,
        y: torch.Tensor | None = None, guidance: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the details of levels ``from_level − 1 … 0`` given the coarse image ``x`` (and the checked
        condition ``y``, with ``guidance``)."""
        for s in range(from_level - 1, -1, -1):
            level = self.levels[s]
            guide = self._guidance(level, x, y, guidance, x.dtype)
            details, log_q_s = level.sample(x.shape[0], context=level.context_for(x, y, x.dtype),
                                            temperature=temperature, guidance=guide)
            x = haar_reconstruct(x, details)
            log_q = log_q + log_q_s
        v, log_det = self._warp_out(x)
        return v, log_q - log_det

    def super_resolve(
        self, coarse: torch.Tensor, temperature: float | None = 1.0, y: torch.Tensor | int | None = None,
        guidance: float = 0.0,
    ) -> torch.Tensor:
        """Upsample coarse images ``(B, C, h, w)`` to the model's full resolution by sampling their details.

        ``h, w`` must be the size of one of the model's coarse images (``H / 2^k`` for ``1 ≤ k ≤ S-1``); the
        output's Haar coarse part at that size equals ``coarse`` (with a ``bin_warp``: the warped output's, which
        differs only within the dequantisation noise). ``temperature=0`` takes each base's mode. A conditional
        model samples the details given ``y`` (one label for all images, or one per image), with ``guidance`` as
        in :meth:`sample`.
        """
        check_floating(coarse, "coarse")
        channels, height, width = self.image_shape
        sizes = {(height >> k, width >> k): k for k in range(1, self.num_levels)}
        if coarse.ndim != 4 or coarse.shape[1] != channels or tuple(coarse.shape[2:]) not in sizes:
            raise ValueError(
                f"coarse images must have shape (B, {channels}, h, w) with (h, w) one of {sorted(sizes)}, "
                f"got {tuple(coarse.shape)}"
            )
        k = sizes[tuple(coarse.shape[2:])]
        y = self.sample_condition(coarse.shape[0], y)
        log_q = torch.zeros(coarse.shape[0], dtype=coarse.dtype, device=coarse.device)
        with without_log_det(self):  # images alone: the CNFs skip their divergence
            return self._refine(coarse, log_q, k, temperature, y, guidance)[0]

    # -------------------------------------------------------------------------------- level-wise training
    def set_trainable_levels(self, levels: Iterable[int] | None) -> None:
        """Train only ``levels`` (numbered as in ``docs/design.md`` §1), freeze the others; ``None`` trains all."""
        chosen = set(range(self.num_levels)) if levels is None else set(self.check_levels(levels))
        for s, level in enumerate(self.levels):
            level.requires_grad_(s in chosen)

    def check_levels(self, levels: Iterable[int]) -> list[int]:
        """``levels`` as a list if each is one of this model's (``0 … num_levels − 1``), else ``ValueError``."""
        return [self._level_index(s) for s in levels]

    def frozen_levels(self) -> list[int]:
        """The levels none of whose parameters requires a gradient."""
        return [s for s, level in enumerate(self.levels) if not any(p.requires_grad for p in level.parameters())]

    def _level_index(self, s: int) -> int:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < self.num_levels:
            raise ValueError(f"level {s!r} does not exist; this model has levels 0..{self.num_levels - 1}")
        return s

    def load_levels(self, source: MRCNF | Mapping[str, torch.Tensor], levels: Iterable[int]) -> None:
        """Copy the parameters of ``levels`` from another MRCNF of the same shape (or its ``state_dict()``).

        Used to combine levels trained in separate runs into one model. A level whose tensors differ in shape
        raises ``ValueError`` naming the level and the first mismatching entry.
        """
        state = source.state_dict() if isinstance(source, nn.Module) else source
        for s in levels:
            s = self._level_index(s)
            prefix = f"levels.{s}."
            own = self.levels[s].state_dict()
            theirs = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(theirs) != set(own):
                missing, extra = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
                raise ValueError(f"level {s}: source lacks {missing[:3]} / has unexpected {extra[:3]} entries")
            for key, value in own.items():
                if theirs[key].shape != value.shape:
                    raise ValueError(
                        f"level {s}: entry {key!r} has shape {tuple(theirs[key].shape)} in the source but "
                        f"{tuple(value.shape)} here (a model of another shape?)"
                    )
            self.levels[s].load_state_dict(theirs)

    def grow(
        self, level_flows: LevelFlows | None = None, *, net_options: Mapping[str, Any] | None = None
    ) -> MRCNF:
        """A new model for images twice the size with one more (finest) level; the trained levels move up.

        This model's level ``s`` becomes level ``s + 1`` with its trained parameters and its own options (net
        options, the logit at the coarsest level, ``detail_stretch``), so on the coarse images ``x_1`` of the
        larger images it computes exactly the terms it computed before (with a ``bin_warp``, which the grown
        model applies at its own resolution, the coarse images are those of the warped larger image: they differ
        from the warped smaller one's within the dequantisation noise). The new level 0 models the finest
        details: ``level_flows`` (registry specs), or the default CNF level whose net takes ``net_options``
        (default: a copy of this model's finest level's net options, the level that modelled the same kind of
        tensor; ``{}`` takes the net's own defaults). Only level 0 is left trainable
        (:meth:`set_trainable_levels` changes that). Requires a rebuildable model (``config`` not ``None``).
        """
        if self.config is None:
            raise ValueError("grow() needs a model built from specs (config is None: a level was given as modules)")
        if level_flows is not None and not _is_plain_spec(level_flows):
            raise ValueError("grow(level_flows=...) takes registry specs so that the grown model stays rebuildable")
        if level_flows is not None and net_options is not None:
            raise TypeError("grow(net_options=...) configures the default new level; with level_flows, give the "
                            "new level's options in its specs")
        config = copy.deepcopy(self.config)
        channels, height, width = self.image_shape
        config["image_shape"] = [channels, 2 * height, 2 * width]
        config["levels"] = self.num_levels + 1
        if config["level_flows"] is not None or level_flows is not None:
            old = config["level_flows"] or [None] * self.num_levels
            config["level_flows"] = [None if level_flows is None else list(level_flows), *old]
        for key in PER_LEVEL_SOLVERS:
            if isinstance(config.get(key), list):  # one per level: the new finest level takes the old finest's
                config[key] = [copy.deepcopy(config[key][0]), *config[key]]
        old_options = config.get("net_options")
        if isinstance(old_options, list):  # one entry per level: the new finest level needs its own
            new = old_options[0] if net_options is None else dict(net_options)
            config["net_options"] = [copy.deepcopy(new), *old_options]
        elif net_options is not None:  # one dict (or none) for all the old levels, another for the new one
            config["net_options"] = [dict(net_options), *[old_options] * self.num_levels]
        config.pop("type")
        grown = MRCNF(**config)
        reference = next(self.parameters(), None)
        if reference is not None:
            grown.to(dtype=reference.dtype, device=reference.device)
        for s, level in enumerate(self.levels):
            grown.levels[s + 1].load_state_dict(level.state_dict())
        grown.set_trainable_levels([0])
        return grown


def _per_level(value: Any, levels: int, name: str, kinds: tuple[type, ...] = (Mapping,),
               what: str = "a dict") -> list[Any]:
    """Option ``name`` of every level: one value of ``kinds`` (``what``) or ``None`` for all levels, or a list of
    one such value (or ``None``) per level."""
    if value is None or isinstance(value, kinds):
        return [value] * levels
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be {what} or a list of one per level, got {value!r}")
    if len(value) != levels:
        raise ValueError(f"{name} must hold one entry per level ({levels}), got {len(value)}")
    for item in value:
        if item is not None and not isinstance(item, kinds):
            raise TypeError(f"each level's {name} must be {what} or None, got {item!r}")
    return list(value)


def _per_level_net_options(
    net_options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None, levels: int
) -> list[Mapping[str, Any] | None]:
    """``net_options`` of every level: one mapping for all levels, or a list of one (or ``None``) per level."""
    per_level = _per_level(net_options, levels, "net_options")
    if any(isinstance(item, Mapping) and "type" in item for item in per_level):
        raise TypeError("net_options hold the net's keyword arguments; name the net type with net=...")
    return per_level


def _check_level_options(options: Mapping[str, Any], net: str) -> None:
    """Level options unknown to the CNF and to ``net`` raise ``TypeError`` naming the key and the closest option."""
    known = ("cnfs_per_level", *net_options_of(net), *CNF_OPTIONS)
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"MRCNF has no option {key!r} with net={net!r}{hint} (level options: "
                            f"{', '.join(known)})")


def _check_label_dropout(label_dropout: float, num_classes: int | None) -> None:
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) or not 0 <= label_dropout < 1:
        raise ValueError(f"label_dropout must be a probability in [0, 1), got {label_dropout!r}")
    if label_dropout and num_classes is None:
        raise ValueError("label_dropout replaces class labels by a null label; it needs num_classes")


def _check_image_shape(image_shape: Sequence[int], levels: int) -> tuple[int, int, int]:
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"image_shape must be (C, H, W) of positive integers, got {image_shape!r}")
    divisor = 2 ** (levels - 1)
    if shape[1] % divisor or shape[2] % divisor:
        raise ValueError(
            f"image height and width must be divisible by 2^(levels-1) = {divisor} for {levels} levels, "
            f"got H={shape[1]}, W={shape[2]}"
        )
    return shape  # type: ignore[return-value]



@register("single_resolution_cnf", kind="model")
def single_resolution_cnf(image_shape: Sequence[int], **options: Any) -> MRCNF:
    """FFJORD-like baseline: CNFs on the full-resolution image after a logit (an MRCNF with one level).

    Takes :class:`MRCNF`'s options; its ``config`` is an ``"mrcnf"`` spec with ``levels=1``.
    """
    if "levels" in options:
        raise TypeError("single_resolution_cnf has exactly one level; do not pass levels")
    return MRCNF(image_shape, levels=1, **options)
