"""Hypothesis strategies for flow inputs: shapes, dtypes, devices and tensors with edge values.

Sizes are given as an ``int`` (fixed), a ``(low, high)`` pair (drawn, inclusive) or a Hypothesis strategy.
Tensors are drawn as a seed plus a pattern rather than element by element, which keeps even thousands of
elements cheap: uniform values in ``[low, high]``, the same with a few elements set to edge values (the
bounds, zero when inside them, the midpoint), or one edge value everywhere (zero variance, which breaks
naive data-dependent initialisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flowplug._checks import check_positive_integers

try:
    from hypothesis import strategies as st
    from hypothesis.strategies import SearchStrategy
except ImportError as error:  # pragma: no cover - exercised only without Hypothesis
    raise ImportError(
        "flowplug.testing.strategies needs Hypothesis: pip install flowplug[test] "
        "(or pip install hypothesis). The assertions in flowplug.testing work without it."
    ) from error

__all__ = [
    "available_devices",
    "devices",
    "dtypes",
    "image_shapes",
    "images",
    "labels",
    "sizes",
    "tensors",
    "vector_shapes",
    "vectors",
]

Size = int | tuple[int, int] | SearchStrategy
Shape = tuple[int, ...] | list[tuple[int, ...]]


def available_devices() -> list[torch.device]:
    """The CPU, and the current CUDA device when one is present."""
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda", torch.cuda.current_device()))
    return found


def devices(choices: Sequence[str | torch.device] | None = None) -> SearchStrategy[torch.device]:
    """One of ``choices`` (default :func:`available_devices`)."""
    options = [torch.device(d) for d in (available_devices() if choices is None else choices)]
    if not options:
        raise ValueError("devices() needs at least one device")
    return st.sampled_from(options)


def dtypes(
    choices: Sequence[torch.dtype] = (torch.float32, torch.float64),
) -> SearchStrategy[torch.dtype]:
    """One of ``choices``, which must be floating dtypes."""
    for dtype in choices:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtypes() takes floating torch dtypes, got {dtype!r}")
    if not choices:
        raise ValueError("dtypes() needs at least one dtype")
    return st.sampled_from(list(choices))


def sizes(size: Size, *, multiple_of: int = 1, name: str = "size") -> SearchStrategy[int]:
    """Positive integers from ``size`` (an int, an inclusive ``(low, high)`` pair or a strategy), restricted to
    multiples of ``multiple_of``; ``ValueError`` if a fixed size or range holds no such multiple."""
    if isinstance(size, SearchStrategy):
        return size.filter(lambda n: n % multiple_of == 0) if multiple_of > 1 else size
    low, high = (size, size) if isinstance(size, int) else size
    if low < 1 or high < low:
        raise ValueError(f"{name} must be a positive int or a (low, high) range, got {size!r}")
    first, last = -(-low // multiple_of), high // multiple_of
    if first > last:
        raise ValueError(f"{name} range {size!r} holds no multiple of {multiple_of}")
    return st.integers(first, last).map(lambda k: k * multiple_of)


def image_shapes(
    *,
    batch: Size = (2, 3),
    channels: Size = (1, 3),
    height: Size = (2, 8),
    width: Size | None = None,
    multiple_of: int = 1,
) -> SearchStrategy[tuple[int, int, int, int]]:
    """Image batch shapes ``(B, C, H, W)``; H and W are multiples of ``multiple_of`` (``2**k`` for ``k``
    squeezes or Haar levels). ``width=None`` draws W from the same range as H, independently."""
    return st.tuples(
        sizes(batch, name="batch"),
        sizes(channels, name="channels"),
        sizes(height, multiple_of=multiple_of, name="height"),
        sizes(height if width is None else width, multiple_of=multiple_of, name="width"),
    )


def vector_shapes(
    *, batch: Size = (2, 3), features: Size = (1, 8)
) -> SearchStrategy[tuple[int, int]]:
    """Vector batch shapes ``(B, D)``."""
    return st.tuples(sizes(batch, name="batch"), sizes(features, name="features"))


def _edge_values(low: float, high: float) -> list[float]:
    values = [low, high, (low + high) / 2]
    if low < 0.0 < high:
        values.append(0.0)
    return values


def _as_strategy(value):
    return value if isinstance(value, SearchStrategy) else st.just(value)


@st.composite
def tensors(
    draw,
    shape: Shape | SearchStrategy,
    *,
    dtype: torch.dtype | SearchStrategy = torch.float64,
    device: str | torch.device | SearchStrategy = "cpu",
    low: float = -3.0,
    high: float = 3.0,
    edge_values: bool = True,
    constant: bool = True,
) -> torch.Tensor | list[torch.Tensor]:
    """A tensor of ``shape`` with values in ``[low, high]`` (or a list of tensors if ``shape`` is a list of
    shapes, as a ``Split``-like flow's input). ``shape``, ``dtype`` and ``device`` may be strategies.

    With ``edge_values`` some draws set a few elements to the bounds, the midpoint or zero, and with
    ``constant`` as well, some set all of them to one such value. Constant batches give data-dependent
    initialisation (normflows' ``ActNorm``) a zero spread and hence a scale of about 1e6, whose float32
    round trip legitimately loses most digits; pass ``constant=False`` for float32 round-trip tests.
    """
    if not low < high:
        raise ValueError(f"tensors() needs low < high, got low={low}, high={high}")
    shape = draw(_as_strategy(shape))
    dtype = draw(_as_strategy(dtype))
    device = torch.device(draw(_as_strategy(device)))
    shapes = shape if isinstance(shape, list) else [shape]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    patterns = ["uniform"] + ["edges"] * edge_values + ["constant"] * (edge_values and constant)
    pattern = draw(st.sampled_from(patterns))
    edges = _edge_values(low, high)
    out = []
    for one in shapes:
        values = low + (high - low) * torch.rand(
            tuple(one), generator=generator, dtype=torch.float64
        )
        if pattern == "constant":
            values.fill_(draw(st.sampled_from(edges)))
        elif pattern == "edges" and values.numel():
            flat = values.view(-1)
            for _ in range(draw(st.integers(1, min(4, flat.numel())))):
                flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(edges))
        out.append(values.to(device=device, dtype=dtype))
    return out if isinstance(shape, list) else out[0]


def images(shape: SearchStrategy | None = None, **options) -> SearchStrategy[torch.Tensor]:
    """Image batches: :func:`tensors` of ``shape`` (default :func:`image_shapes`); ``options`` go to
    :func:`tensors`."""
    return tensors(image_shapes() if shape is None else shape, **options)


def vectors(shape: SearchStrategy | None = None, **options) -> SearchStrategy[torch.Tensor]:
    """Vector batches: :func:`tensors` of ``shape`` (default :func:`vector_shapes`)."""
    return tensors(vector_shapes() if shape is None else shape, **options)


@st.composite
def labels(draw, num_classes: int, batch_size: Size, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Class labels for a conditional model: an int64 tensor ``(batch_size,)`` of values in ``0 … num_classes − 1``,
    sometimes all one class (one class per batch is what a per-class check runs), sometimes every class
    in turn, otherwise drawn at random."""
    check_positive_integers(num_classes=num_classes)
    n = draw(sizes(batch_size, name="batch_size"))
    pattern = draw(st.sampled_from(("one class", "every class", "random")))
    if pattern == "one class":
        values = [draw(st.integers(0, num_classes - 1))] * n
    elif pattern == "every class":
        values = [i % num_classes for i in range(n)]
    else:
        values = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.int64, device=device)
