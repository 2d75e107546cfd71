"""Valid random settings for registered components, and random compositions built through the registry.

Each flow in the registry needs per-component knowledge to be property-tested: which keyword arguments are
valid, which input shapes it accepts, which values its data side may hold (``logit`` needs ``[0, 1]``), whether
it has an inverse, whether its log-det is a stochastic estimate, and how exact its inverse is. A
:class:`ComponentStrategy` records that; :func:`register_component_strategy` adds one for a third-party
component, and :func:`missing_component_strategies` lists the registered flows that have none (flowplug's own
suite fails on any, so new components cannot skip property tests). A component that cannot be
property-tested as a bijection is listed, with the reason, by :func:`exclude_component`.

Shapes here are per sample (without the batch dimension) and describe the *data side*: the input of
``inverse``. A list of shapes stands for a list of tensors (``split``'s data side).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flowplug.conditioning import ComposedFlow
from flowplug.registry import build, components
from flowplug.testing.modules import perturb_parameters
from flowplug.testing.strategies import SearchStrategy, Shape, sizes, st

__all__ = [
    "ComponentCase",
    "ComponentStrategy",
    "CompositionCase",
    "component_cases",
    "component_strategy",
    "exclude_component",
    "excluded_components",
    "image_compositions",
    "missing_component_strategies",
    "register_component_strategy",
]

Flag = bool | Callable[[Mapping[str, Any]], bool]
"""A property that is fixed, or depends on the drawn keyword arguments."""


@dataclass(frozen=True)
class ComponentStrategy:
    """What the property tests need to know about one registered component."""

    settings: SearchStrategy
    """Draws ``(spec_kwargs, input_shape)``: keyword arguments for the registry and a per-sample data-side
    input shape (a tuple, or a list of tuples for a list input) that suits them."""
    value_range: tuple[float, float] = (-2.0, 2.0)
    """Values the data side may hold."""
    invertible: Flag = True
    """Whether ``inverse`` exists; if not, only the forward log-det is checked."""
    stochastic: Flag = False
    """Whether the log-det is a stochastic estimate (checked for unbiasedness)."""
    tolerances: tuple[float, float] | None = None
    """``(atol, rtol)`` for float64 when the inverse is numerical rather than exact (ODE solves); ``None``
    uses :func:`flowplug.testing.default_tolerances`."""


@dataclass(frozen=True)
class ComponentCase:
    """One drawn test case: a component's spec, a batch input shape and what to check."""

    spec: dict[str, Any]
    input_shape: Shape
    """Full input shape(s) with the batch dimension first."""
    value_range: tuple[float, float]
    invertible: bool
    stochastic: bool
    tolerances: tuple[float, float] | None
    seed: int = 0

    def build(
        self,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        perturb: float = 0.1,
    ) -> nn.Module:
        """Build the spec through the registry (under a forked RNG seeded ``seed``, so random initialisation
        is reproducible), move it to ``dtype``/``device`` and perturb its parameters by ``perturb``."""
        return _build_seeded(self.spec, dtype, device, perturb, self.seed)


@dataclass(frozen=True)
class CompositionCase:
    """A random chain of image components, in normflows' order (``specs[0]`` acts first when sampling)."""

    specs: list[dict[str, Any]]
    input_shape: tuple[int, ...]
    """Full data-side input shape ``(B, C, H, W)``."""
    seed: int = 0
    tolerances: tuple[float, float] | None = field(default=None)

    def build(
        self,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        perturb: float = 0.1,
    ) -> ComposedFlow:
        """Build every spec through the registry and chain them as one :class:`ComposedFlow`."""
        return _build_seeded(self.specs, dtype, device, perturb, self.seed, compose=True)


def _build_seeded(spec, dtype, device, perturb, seed, compose=False) -> nn.Module:
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        built = build(spec)
    module = ComposedFlow(built) if compose else built
    module = module.to(device=device, dtype=dtype)
    return perturb_parameters(module, perturb, seed) if perturb else module


_STRATEGIES: dict[str, ComponentStrategy] = {}
_EXCLUDED: dict[str, str] = {}


def register_component_strategy(
    name: str,
    settings: SearchStrategy,
    *,
    value_range: tuple[float, float] = (-2.0, 2.0),
    invertible: Flag = True,
    stochastic: Flag = False,
    tolerances: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> None:
    """Declare how to draw valid settings for the registered component ``name`` (see
    :class:`ComponentStrategy`). The component need not be registered yet: the entry is used once it is."""
    if not isinstance(settings, SearchStrategy):
        raise TypeError(
            f"settings for {name!r} must be a Hypothesis strategy, got {type(settings).__name__}"
        )
    if name in _STRATEGIES and not overwrite:
        raise ValueError(
            f"component {name!r} already has a strategy; pass overwrite=True to replace it"
        )
    low, high = value_range
    if not low < high:
        raise ValueError(f"value_range for {name!r} must have low < high, got {value_range!r}")
    _STRATEGIES[name] = ComponentStrategy(settings, (low, high), invertible, stochastic, tolerances)


def exclude_component(name: str, reason: str) -> None:
    """Exempt ``name`` from :func:`missing_component_strategies`, for a documented ``reason``."""
    if not reason:
        raise ValueError(f"excluding {name!r} needs a reason")
    _EXCLUDED[name] = reason


def excluded_components() -> dict[str, str]:
    """Names exempted from property tests, with their reasons."""
    return dict(_EXCLUDED)


def component_strategy(name: str) -> ComponentStrategy:
    """The strategy entry of ``name``; ``ValueError`` if it has none."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"component {name!r} has no property-test strategy; add one with "
            "flowplug.testing.register_component_strategy"
        ) from None


def missing_component_strategies(kinds: Sequence[str] = ("flow",)) -> list[str]:
    """Registered components of ``kinds`` with neither a strategy nor an exclusion."""
    registered = {name for kind in kinds for name in components(kind)}
    return sorted(registered - set(_STRATEGIES) - set(_EXCLUDED))


def _resolve(flag: Flag, kwargs: Mapping[str, Any]) -> bool:
    return flag(kwargs) if callable(flag) else flag


@st.composite
def component_cases(
    draw, names: Sequence[str] | None = None, *, batch: int | tuple[int, int] = (2, 3)
) -> ComponentCase:
    """A :class:`ComponentCase` for one of ``names`` (default: every registered flow with a strategy).

    ``batch`` should allow at least 2 samples: normflows' ``ActNorm`` initialises from the batch's spread.
    """
    if names is None:
        names = [name for name in components("flow") if name in _STRATEGIES]
    name = draw(st.sampled_from(sorted(names)))
    entry = component_strategy(name)
    kwargs, shape = draw(entry.settings)
    batch_size = draw(sizes(batch, name="batch"))
    full = [(batch_size, *s) for s in shape] if isinstance(shape, list) else (batch_size, *shape)
    return ComponentCase(
        spec={"type": name, **kwargs},
        input_shape=full,
        value_range=entry.value_range,
        invertible=_resolve(entry.invertible, kwargs),
        stochastic=_resolve(entry.stochastic, kwargs),
        tolerances=entry.tolerances,
        seed=draw(st.integers(0, 2**16)),
    )


# --- settings of image components as functions of the data-side shape (C, H, W) --------------------------
# Each returns a strategy of keyword arguments, or None when the component cannot take that shape; the same
# functions serve the single-component entries and the random compositions.

ImageShape = tuple[int, int, int]
_COUPLING_SPLITS = ["channel", "channel_inv", "checkerboard", "checkerboard_inv"]


def _per_channel(shape: ImageShape) -> SearchStrategy:
    return st.just({"shape": (shape[0], 1, 1)})


def _affine_const(shape: ImageShape) -> SearchStrategy:
    return st.fixed_dictionaries(
        {
            "shape": st.sampled_from([(shape[0], 1, 1), tuple(shape)]),
            "scale": st.booleans(),
            "shift": st.booleans(),
        }
    )


def _conv_1x1(shape: ImageShape) -> SearchStrategy:
    return st.fixed_dictionaries({"num_channels": st.just(shape[0]), "use_lu": st.booleans()})


def _split_modes(shape: ImageShape) -> list[str]:
    """Coupling splits valid for ``shape``: normflows' checkerboard split halves the last axis."""
    return _COUPLING_SPLITS if shape[2] % 2 == 0 else _COUPLING_SPLITS[:2]


def _coupling(shape: ImageShape, **extra: SearchStrategy) -> SearchStrategy | None:
    """Settings shared by normflows' Glow block and affine coupling block (needs two or more channels)."""
    if shape[0] < 2:
        return None
    return st.fixed_dictionaries(
        {
            "channels": st.just(shape[0]),
            "hidden_channels": st.integers(2, 6),
            "scale": st.booleans(),
            "scale_map": st.sampled_from(["exp", "sigmoid", "sigmoid_inv"]),
            "split_mode": st.sampled_from(_split_modes(shape)),
            **extra,
        }
    )


def _glow_block(shape: ImageShape) -> SearchStrategy | None:
    return _coupling(shape, init_zeros=st.just(False), use_lu=st.booleans())


def _affine_coupling_block(shape: ImageShape) -> SearchStrategy | None:
    """The shared coupling settings; a coupling with scales may also bound them (``scale_clamp``)."""
    coupling = _coupling(shape)
    if coupling is None:
        return None
    clamps = st.none() | st.floats(0.5, 3.0)
    return coupling.flatmap(lambda spec: clamps.map(lambda clamp: {**spec, "scale_clamp": clamp})
                            if spec["scale"] else st.just(spec))


def _squeezing(shape: ImageShape) -> SearchStrategy | None:
    _, height, width = shape
    return st.just({}) if height % 2 == 0 and width % 2 == 0 else None


def _cnf(shape: ImageShape) -> SearchStrategy | None:
    """Tiny CNFs (float64 intended) with the exact trace, so their log-dets are checked exactly, and fixed-step
    RK4 in two steps for training and evaluation (the brute-force Jacobian differentiates through every solve,
    so larger inputs cost minutes). Hutchinson's unbiasedness is tested with the CNF's own tests."""
    if shape[0] > 2 or shape[0] * shape[1] * shape[2] > 16:
        return None
    solver = {"method": "rk4", "step_size": 0.5}
    return st.just(
        {
            "net": {"type": "conv_odenet", "channels": shape[0], "hidden_channels": 8},
            "divergence": "exact",
            "train_solver": solver,
            "eval_solver": solver,
        }
    )


def _standardize(shape: ImageShape) -> SearchStrategy:
    return st.just({"num_channels": shape[0]})


def _asinh_stretch(shape: ImageShape) -> SearchStrategy:
    del shape  # elementwise: any shape
    # the sampling direction is scale·sinh(z / scale): scales of at least 1/4 keep it finite on the drawn inputs
    return st.fixed_dictionaries({"scale": st.sampled_from([0.25, 0.5, 1.0])})


def _is_squeeze(name: str) -> bool:
    return name in ("squeeze", "haar_squeeze")


_IMAGE_STEPS: dict[str, Callable[[ImageShape], SearchStrategy | None]] = {
    "act_norm": _per_channel,
    "affine_const": _affine_const,
    "invertible_1x1_conv": _conv_1x1,
    "glow_block": _glow_block,
    "affine_coupling_block": _affine_coupling_block,
    "squeeze": _squeezing,
    "haar_squeeze": _squeezing,
    "cnf": _cnf,
    "standardize": _standardize,
    "asinh_stretch": _asinh_stretch,
}
"""Image components that chain: each maps (C, H, W) to itself, except the squeezes: (4C, H/2, W/2)."""

_NOT_CHAINED_BY_DEFAULT = frozenset({"asinh_stretch"})
"""Left out of default random chains: stacked, the stretch's sampling direction (scale·sinh(z / scale)) grows
doubly exponentially and overflows on ordinary inputs. Name it in ``names`` to chain it anyway."""


def _next_shape(name: str, shape: ImageShape) -> ImageShape:
    channels, height, width = shape
    return (4 * channels, height // 2, width // 2) if _is_squeeze(name) else shape


def _image_shapes(channels=(1, 3), size=(2, 4)) -> SearchStrategy[ImageShape]:
    return st.tuples(sizes(channels), sizes(size, multiple_of=2), sizes(size, multiple_of=2))


def _image_entry(name: str, channels=(1, 3), size=(2, 4)) -> SearchStrategy:
    step = _IMAGE_STEPS[name]
    shapes = _image_shapes(channels, size).filter(lambda s: step(s) is not None)
    return shapes.flatmap(lambda s: step(s).map(lambda kwargs: (kwargs, s)))


@st.composite
def image_compositions(
    draw,
    *,
    names: Sequence[str] | None = None,
    channels: int | tuple[int, int] = (1, 2),
    size: int | tuple[int, int] = (4, 8),
    max_length: int = 4,
    max_channels: int = 16,
    batch: int | tuple[int, int] = (2, 3),
) -> CompositionCase:
    """A random, shape-compatible chain of 1 to ``max_length`` image components built from ``names`` (default:
    every chainable one that is registered: ``act_norm``, ``affine_const``, ``invertible_1x1_conv``,
    ``glow_block``, ``affine_coupling_block``, ``squeeze``, ``haar_squeeze``, ``cnf``).

    The chain is drawn from the data side: each component must accept the shape the previous one produces in
    the density direction, and squeezes are skipped once they would exceed ``max_channels``.
    """
    registered = set(components("flow"))
    default = [n for n in _IMAGE_STEPS if n not in _NOT_CHAINED_BY_DEFAULT]
    chosen = [n for n in (names or default) if n in registered]
    unknown = [n for n in chosen if n not in _IMAGE_STEPS]
    if unknown:
        raise ValueError(f"no composition rule for {unknown}; chainable: {sorted(_IMAGE_STEPS)}")
    if not chosen:
        raise ValueError(f"none of {list(names or default)} is registered")
    shape = (
        draw(sizes(channels)),
        draw(sizes(size, multiple_of=2)),
        draw(sizes(size, multiple_of=2)),
    )
    data_side = shape
    data_first: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, max_length))):
        options = [
            n
            for n in chosen
            if _IMAGE_STEPS[n](shape) is not None
            and not (_is_squeeze(n) and 4 * shape[0] > max_channels)
        ]
        if not options:
            break
        name = draw(st.sampled_from(options))
        data_first.append({"type": name, **draw(_IMAGE_STEPS[name](shape))})
        shape = _next_shape(name, shape)
    tolerances = (
        _STRATEGIES["cnf"].tolerances if any(s["type"] == "cnf" for s in data_first) else None
    )
    return CompositionCase(
        specs=data_first[::-1],
        input_shape=(draw(sizes(batch)), *data_side),
        seed=draw(st.integers(0, 2**16)),
        tolerances=tolerances,
    )


# --- the table -----------------------------------------------------------------------------------------------


def _vector_size(low: int = 2, high: int = 4) -> SearchStrategy[int]:
    return st.integers(low, high)


def _with_shape(kwargs: SearchStrategy, shape) -> SearchStrategy:
    return kwargs.map(lambda k: (k, shape))


def _vector_entry(
    make: Callable[[int], SearchStrategy], low: int = 2, high: int = 4
) -> SearchStrategy:
    return _vector_size(low, high).flatmap(lambda d: _with_shape(make(d), (d,)))


def _split_shapes(shape: ImageShape, mode: str) -> list[tuple[int, ...]]:
    """Data-side shapes of normflows' ``Split`` (the pieces its ``inverse`` joins)."""
    channels, height, width = shape
    if mode.startswith("checkerboard"):
        return [(channels, height, width // 2)] * 2
    first, second = (channels + 1) // 2, channels // 2
    return (
        [(first, height, width), (second, height, width)]
        if mode == "channel"
        else [(second, height, width), (first, height, width)]
    )


def _split_entry() -> SearchStrategy:
    return st.tuples(_image_shapes((2, 3)), st.sampled_from(_COUPLING_SPLITS)).map(
        lambda pair: ({"mode": pair[1]}, _split_shapes(*pair))
    )


def _merge_entry() -> SearchStrategy:
    return st.tuples(_image_shapes((2, 3)), st.sampled_from(_COUPLING_SPLITS)).map(
        lambda pair: ({"mode": pair[1]}, pair[0])
    )


def _haar_split_entry() -> SearchStrategy:
    return _image_shapes((1, 2), (1, 2)).map(lambda s: ({}, [s, (3 * s[0], s[1], s[2])]))


def _spline(d: int, **extra: SearchStrategy) -> SearchStrategy:
    return st.fixed_dictionaries(
        {
            "num_input_channels": st.just(d),
            "num_blocks": st.integers(1, 2),
            "num_hidden_channels": st.integers(2, 6),
            "num_bins": st.integers(2, 5),
            **extra,
        }
    )


def _register_builtin() -> None:
    for name in (
        "act_norm",
        "affine_const",
        "invertible_1x1_conv",
        "glow_block",
        "affine_coupling_block",
        "squeeze",
        "haar_squeeze",
        "standardize",
        "asinh_stretch",
    ):
        register_component_strategy(name, _image_entry(name))
    register_component_strategy("cnf", _image_entry("cnf", channels=(1, 2), size=(2, 4)), tolerances=(1e-5, 1e-5))
    register_component_strategy("haar_merge", _image_entry("squeeze"))
    register_component_strategy("haar_split", _haar_split_entry())
    register_component_strategy("split", _split_entry())
    register_component_strategy("merge", _merge_entry())
    register_component_strategy(
        "invertible_affine",
        _vector_entry(
            lambda d: st.fixed_dictionaries({"num_channels": st.just(d), "use_lu": st.booleans()})
        ),
    )
    register_component_strategy(
        "permute",
        _vector_entry(
            lambda d: st.fixed_dictionaries(
                {"num_channels": st.just(d), "mode": st.sampled_from(["shuffle", "swap"])}
            )
        ),
    )
    register_component_strategy(
        "lu_linear_permute",
        _vector_entry(
            lambda d: st.fixed_dictionaries(
                {"num_channels": st.just(d), "identity_init": st.booleans()}
            )
        ),
    )
    register_component_strategy(
        "masked_affine_autoregressive",
        _vector_entry(
            lambda d: st.fixed_dictionaries(
                {
                    "features": st.just(d),
                    "hidden_features": st.integers(2, 6),
                    "num_blocks": st.integers(1, 2),
                    "use_residual_blocks": st.booleans(),
                }
            )
        ),
    )
    register_component_strategy(
        "coupled_rational_quadratic_spline",
        _vector_entry(
            lambda d: _spline(d, tail_bound=st.sampled_from([2.0, 3.0]), reverse_mask=st.booleans())
        ),
        value_range=(-4.0, 4.0),
    )
    register_component_strategy(
        "autoregressive_rational_quadratic_spline",
        _vector_entry(
            lambda d: _spline(
                d,
                tail_bound=st.sampled_from([2.0, 3.0]),
                permute_mask=st.booleans(),
                init_identity=st.booleans(),
            )
        ),
        value_range=(-4.0, 4.0),
    )
    register_component_strategy(
        "planar",
        _vector_entry(
            lambda d: st.fixed_dictionaries(
                {"shape": st.just((d,)), "act": st.sampled_from(["tanh", "leaky_relu"])}
            ),
            low=1,
        ),
        invertible=lambda kwargs: kwargs["act"] == "leaky_relu",
        # normflows 1.7.3's leaky_relu inverse log-det matches the forward one only to ~3e-8 in float64
        tolerances=(1e-6, 1e-6),
    )
    register_component_strategy(
        "radial", _vector_entry(lambda d: st.just({"shape": (d,)}), low=1), invertible=False
    )
    register_component_strategy(
        "logit",
        _vector_entry(lambda d: st.fixed_dictionaries({"alpha": st.floats(0.01, 0.2)}), low=1),
        value_range=(0.0, 1.0),
    )
    register_component_strategy(
        "edge_bin_warp",
        # the lower of two bins, away from its edges: the sampling direction pushes values towards the edges
        # doubly exponentially (w = σ(logit(w')/a)), so near an edge it leaves the bin in floating point (data
        # never lie there: the warped density of the bin's uniform noise is ~(distance)^(1/a)); the upper bin
        # and other sizes are property-tested in tests/test_bin_warp.py
        _image_shapes().flatmap(lambda shape: st.fixed_dictionaries({
            "n_bins": st.just(2), "power": st.sampled_from([0.5, 0.75]),
        }).map(lambda kwargs: (kwargs, shape))),
        value_range=(1e-3, 0.499),
    )
    register_component_strategy(
        "shift",
        _vector_entry(lambda d: st.fixed_dictionaries({"shift": st.floats(-2.0, 2.0)}), low=1),
    )


_register_builtin()
