"""Property assertions for flows and flow models; they need only torch (no Hypothesis).

Conventions (normflows', docs/design.md §2): ``flow.forward(z)`` is the sampling direction and ``flow.inverse(x)``
the density direction; each returns ``(out, log_det)``. ``x``, ``z`` and ``out`` may be one tensor or a list of
tensors sharing the batch dimension (``Split``/``Merge``-like flows). A ``context`` is passed only to flows
whose ``forward``/``inverse`` take one (:mod:`flowplug.conditioning`).

Every assertion raises ``AssertionError`` with a message naming the worst sample or element, the value found,
the value expected and the absolute and relative errors. Arguments that cannot be checked (wrong types,
inputs too large for a brute-force Jacobian) raise ``TypeError``/``ValueError`` instead.

Data-dependent initialisation: normflows' ``ActNorm`` sets its parameters from the first batch it sees, in
either direction. With ``warm_up=True`` (the default) the assertions first pass the whole ``x`` through the flow
once, so that this happens on a realistic batch before anything is compared (rather than, say, on a single
sample, whose standard deviation is zero). The warm-up changes such a flow's state, as its first training
batch would.

Log-determinants: normflows layers may return a Python ``0`` (``Squeeze``, ``Split``) or a 0-d tensor
(``ActNorm``). By default these are accepted and broadcast over the batch, as normflows' own composites do.
``strict_log_det=True`` demands flowplug's contract instead: a tensor of shape ``(B,)`` with the input's dtype
on the input's device.

Tolerances default by dtype (:func:`default_tolerances`); a value passes when
``|got - expected| <= atol + rtol * |expected|``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from flowplug.conditioning import flow_forward, flow_inverse
from flowplug.testing._structure import (
    Tensors,
    as_list,
    assert_close,
    clone,
    describe,
    detach,
    flatten,
    normalize_log_det,
    same_structure,
    unchanged,
)

__all__ = [
    "assert_batch_independent",
    "assert_invertible",
    "assert_log_det_correct",
    "assert_sample_log_prob_consistent",
    "default_tolerances",
]

Direction = Literal["forward", "inverse"]

_TOLERANCES: Mapping[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-8, 1e-6),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(atol, rtol)`` used when an assertion is given none: (1e-8, 1e-6) for float64, (1e-4, 1e-4) for
    float32, (1e-2, 1e-2) for float16 and (5e-2, 5e-2) for bfloat16."""
    if dtype not in _TOLERANCES:
        raise TypeError(f"no default tolerances for dtype {dtype}; pass atol and rtol")
    return _TOLERANCES[dtype]


def _tolerances(x: Tensors, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default_atol, default_rtol = default_tolerances(as_list(x, "x")[0].dtype)
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def _apply(
    flow: nn.Module, direction: Direction, inputs: Tensors, context: torch.Tensor | None
) -> tuple[Tensors, Any]:
    """Run one direction on ``inputs`` and check what a caller relies on: the input is left as it was, the
    output is finite, has as many dimensions per sample as the input, and keeps its dtype and device."""
    reference = as_list(inputs, "x")[0]
    snapshot = clone(inputs)
    call = flow_forward if direction == "forward" else flow_inverse
    out, log_det = call(flow, inputs, context)
    name = f"{type(flow).__name__}.{direction}"
    if not unchanged(snapshot, inputs):
        raise AssertionError(
            f"{name} modified its input in place; callers' tensors must be left unchanged"
        )
    try:
        items = as_list(out, f"{name} output")
    except (TypeError, ValueError) as error:
        raise AssertionError(f"{name} returned an invalid output: {error}") from None
    for item in items:
        if item.dtype != reference.dtype or item.device != reference.device:
            raise AssertionError(
                f"{name} changed dtype or device: input {describe(inputs)}, output {describe(out)}"
            )
        if not bool(torch.isfinite(item).all()):
            raise AssertionError(
                f"{name} returned non-finite values for finite input {describe(inputs)}"
            )
    dims_in, dims_out = flatten(inputs).shape[1], flatten(out).shape[1]
    if dims_in != dims_out:
        raise AssertionError(
            f"{name} maps {dims_in} dimensions per sample to {dims_out}; a bijection keeps the count "
            f"(input {describe(inputs)}, output {describe(out)})"
        )
    return out, log_det


def _warm_up(
    flow: nn.Module, direction: Direction, x: Tensors, context: torch.Tensor | None
) -> None:
    with torch.no_grad():
        (flow_forward if direction == "forward" else flow_inverse)(flow, clone(x), context)


def _standard_normal_like(like: Tensors) -> Tensors:
    """Standard normal draws with ``like``'s structure, from a CPU generator seeded 0 (reproducible)."""
    generator = torch.Generator().manual_seed(0)
    items = [
        torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device, t.dtype)
        for t in as_list(like, "z")
    ]
    return items[0] if isinstance(like, torch.Tensor) else items


def _round_trip(
    flow: nn.Module,
    first: Direction,
    start: Tensors,
    context: torch.Tensor | None,
    *,
    atol: float,
    rtol: float,
    strict: bool,
) -> Tensors:
    """``second(first(start))`` must give back ``start`` and the two log-dets must cancel; returns
    ``first(start)``."""
    second: Direction = "forward" if first == "inverse" else "inverse"
    middle, log_det_first = _apply(flow, first, start, context)
    back, log_det_second = _apply(flow, second, detach(middle), context)
    label = f"{second}({first}(input))"
    if not same_structure(back, start):
        raise AssertionError(f"{label} is {describe(back)} but the input was {describe(start)}")
    assert_close(
        flatten(back),
        flatten(start),
        atol=atol,
        rtol=rtol,
        what=f"{label} vs input",
        index_names=("sample", "element"),
    )
    reference = as_list(start, "input")[0]
    ld_first = normalize_log_det(log_det_first, reference, strict=strict, what=f"flow.{first}")
    ld_second = normalize_log_det(log_det_second, reference, strict=strict, what=f"flow.{second}")
    assert_close(
        -ld_second,
        ld_first,
        atol=atol,
        rtol=rtol,
        what=f"log-dets do not cancel (showing -{second} log_det against {first} log_det)",
    )
    return detach(middle)


def assert_invertible(
    flow: nn.Module,
    x: Tensors,
    context: torch.Tensor | None = None,
    *,
    z: Tensors | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    strict_log_det: bool = False,
    warm_up: bool = True,
) -> None:
    """Assert that ``flow`` is a bijection on ``x`` whose two directions agree.

    Checks both round trips: ``forward(inverse(x)) == x`` from the data side, and ``inverse(forward(z)) ==
    z`` from the latent side, where ``z`` defaults to standard normal draws shaped like ``inverse(x)`` (seed 0).
    In each, the log-dets of the two directions cancel, the round trip gives back the input's structure,
    shapes, dtype and device, every output is finite and keeps the number of dimensions per sample, and no
    call modifies its input in place.
    """
    atol, rtol = _tolerances(x, atol, rtol)
    if warm_up:
        _warm_up(flow, "inverse", x, context)
    latent = _round_trip(flow, "inverse", x, context, atol=atol, rtol=rtol, strict=strict_log_det)
    start = _standard_normal_like(latent) if z is None else z
    _round_trip(flow, "forward", start, context, atol=atol, rtol=rtol, strict=strict_log_det)


def _jacobian_log_det(inputs: list[torch.Tensor], outputs: torch.Tensor) -> torch.Tensor:
    """``log|det J|`` per sample of the map whose inputs (leaves) produced ``outputs`` ``(B, D)``.

    Samples do not interact, so the gradient of the batch sum of output ``j`` holds row ``j`` of every
    sample's Jacobian at once: ``D`` backward passes give all ``B`` Jacobians.
    """
    batch, dims = outputs.shape
    total = outputs.sum(dim=0)
    rows = []
    for j in range(dims):
        grads = torch.autograd.grad(total[j], inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(t)).reshape(batch, -1)
                    for g, t in zip(grads, inputs, strict=True)
                ],
                dim=1,
            )
        )
    jacobian = torch.stack(rows, dim=1)
    sign, log_abs_det = torch.linalg.slogdet(jacobian)
    singular = (sign == 0).nonzero()
    if singular.numel():
        raise AssertionError(
            f"the Jacobian is singular at sample {int(singular[0])} ({singular.numel()} singular sample(s)); "
            "the map is not invertible there"
        )
    return log_abs_det


def _check_log_det(
    flow: nn.Module,
    direction: Direction,
    point: Tensors,
    context: torch.Tensor | None,
    *,
    atol: float,
    rtol: float,
    strict: bool,
    stochastic: bool,
    num_draws: int,
    z_score: float,
    max_dims: int,
) -> None:
    leaves = [t.detach().clone().requires_grad_(True) for t in as_list(point, "x")]
    inputs = leaves[0] if isinstance(point, torch.Tensor) else leaves
    dims = flatten(point).shape[1]
    if dims > max_dims:
        raise ValueError(
            f"x has {dims} dimensions per sample; a brute-force Jacobian needs {dims} backward passes, "
            f"more than max_dims={max_dims}. Use a smaller input or raise max_dims."
        )
    with torch.enable_grad():
        out, log_det = _apply(flow, direction, inputs, context)
        expected = _jacobian_log_det(leaves, flatten(out)).detach()
    reference = leaves[0]
    got = normalize_log_det(log_det, reference, strict=strict, what=f"flow.{direction}")
    label = f"flow.{direction} log_det vs log|det J| of the autograd Jacobian"
    if not stochastic:
        assert_close(got, expected, atol=atol, rtol=rtol, what=label)
        return
    draws = [got]
    for _ in range(num_draws - 1):
        again, log_det = _apply(flow, direction, clone(point), context)
        assert_close(
            flatten(again),
            flatten(out),
            atol=atol,
            rtol=rtol,
            what=f"flow.{direction} output changes between calls (a stochastic log-det must not move the output)",
            index_names=("sample", "element"),
        )
        draws.append(normalize_log_det(log_det, reference, strict=strict, what=f"flow.{direction}"))
    stacked = torch.stack(draws)
    mean = stacked.mean(dim=0)
    std_error = stacked.std(dim=0) / math.sqrt(num_draws)
    error = (mean - expected).abs()
    allowed = z_score * std_error + atol + rtol * expected.abs()
    if bool((error <= allowed).all()):
        return
    worst = int(torch.argmax(error - allowed))
    scores = error / std_error.clamp_min(torch.finfo(error.dtype).tiny)
    raise AssertionError(
        f"{label}: the mean of {num_draws} stochastic estimates is biased at {int((error > allowed).sum())} of "
        f"{error.numel()} sample(s); worst at sample {worst}: mean {mean[worst].item()!r} ± "
        f"{std_error[worst].item():.3g} (standard error), expected {expected[worst].item()!r} "
        f"(abs error {error[worst].item():.3g}, {scores[worst].item():.1f} standard errors; allowed "
        f"{z_score:g} standard errors + atol={atol:g} + rtol={rtol:g})"
    )


def assert_log_det_correct(
    flow: nn.Module,
    x: Tensors,
    context: torch.Tensor | None = None,
    *,
    direction: Literal["forward", "inverse", "both"] = "both",
    atol: float | None = None,
    rtol: float | None = None,
    strict_log_det: bool = False,
    warm_up: bool = True,
    stochastic: bool = False,
    num_draws: int = 32,
    z_score: float = 4.0,
    max_dims: int = 512,
) -> None:
    """Assert that the returned log-dets equal ``log|det J|`` of the brute-force autograd Jacobian.

    ``x`` is the input of the first direction checked: a data-side input of ``inverse`` for
    ``direction="inverse"`` or ``"both"`` (the forward direction is then checked at ``inverse(x)``), and an
    input of ``forward`` for ``direction="forward"`` (the only choice for flows without an inverse). The
    Jacobian of each sample's flattened map is built with one backward pass per dimension, so keep inputs
    small: at most ``max_dims`` dimensions per sample. Use float64 for tight tolerances.

    ``stochastic=True`` is for unbiased log-det estimators (Hutchinson-trace CNFs): the direction is run
    ``num_draws`` times at the same point, its output must not change, and the mean estimate must lie within
    ``z_score`` standard errors (plus ``atol + rtol * |expected|`` for solver error) of the exact value. With
    the default ``z_score=4`` a correct estimator fails a sample with probability about 6e-5 (normal
    approximation).
    """
    if direction not in ("forward", "inverse", "both"):
        raise ValueError(f"direction must be 'forward', 'inverse' or 'both', got {direction!r}")
    if stochastic and num_draws < 2:
        raise ValueError(f"stochastic checks need num_draws >= 2, got {num_draws}")
    atol, rtol = _tolerances(x, atol, rtol)
    first: Direction = "forward" if direction == "forward" else "inverse"
    if warm_up:
        _warm_up(flow, first, x, context)
    options = dict(
        atol=atol,
        rtol=rtol,
        strict=strict_log_det,
        stochastic=stochastic,
        num_draws=num_draws,
        z_score=z_score,
        max_dims=max_dims,
    )
    _check_log_det(flow, first, x, context, **options)
    if direction == "both":
        latent, _ = _apply(flow, "inverse", clone(x), context)
        _check_log_det(flow, "forward", detach(latent), context, **options)


def _select(x: Tensors, index: int) -> Tensors:
    if isinstance(x, torch.Tensor):
        return x[index : index + 1]
    return [t[index : index + 1] for t in x]


def assert_batch_independent(
    flow: nn.Module,
    x: Tensors,
    context: torch.Tensor | None = None,
    *,
    direction: Direction = "inverse",
    atol: float | None = None,
    rtol: float | None = None,
    warm_up: bool = True,
) -> None:
    """Assert that each sample's output and log-det do not depend on the other samples of its batch.

    Runs ``direction`` on the whole batch and on every sample alone (with its row of ``context``, if
    ``context`` is a tensor with the batch's size) and compares. Catches layers that use batch statistics
    outside training, or data-dependent initialisation that happens after the warm-up.
    """
    if direction not in ("forward", "inverse"):
        raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
    atol, rtol = _tolerances(x, atol, rtol)
    if warm_up:
        _warm_up(flow, direction, x, context)
    out, log_det = _apply(flow, direction, clone(x), context)
    reference = as_list(x, "x")[0]
    batch = reference.shape[0]
    log_det = normalize_log_det(log_det, reference, strict=False, what=f"flow.{direction}")
    per_sample_ctx = (
        isinstance(context, torch.Tensor) and context.ndim and context.shape[0] == batch
    )
    alone_out, alone_log_det = [], []
    for i in range(batch):
        sample_context = context[i : i + 1] if per_sample_ctx else context
        o, ld = _apply(flow, direction, clone(_select(x, i)), sample_context)
        alone_out.append(flatten(o))
        alone_log_det.append(
            normalize_log_det(ld, as_list(o, "out")[0], strict=False, what="alone")
        )
    assert_close(
        torch.cat(alone_out),
        flatten(out),
        atol=atol,
        rtol=rtol,
        what=f"flow.{direction} output of each sample alone vs within the batch",
        index_names=("sample", "element"),
    )
    assert_close(
        torch.cat(alone_log_det),
        log_det,
        atol=atol,
        rtol=rtol,
        what=f"flow.{direction} log_det of each sample alone vs within the batch",
    )


def _model_kwargs(method: Any, context: Any) -> dict[str, Any]:
    """Keyword arguments for a model's ``sample``/``log_prob`` beyond the first: ``context`` goes to a
    parameter named ``context`` or ``y`` (normflows' class label); any other parameter without a default gets
    ``None`` (normflows 1.7.3's ``MultiscaleFlow.log_prob(x, y)`` requires ``y`` even when unconditional)."""
    kwargs: dict[str, Any] = {}
    parameters = list(inspect.signature(method).parameters.values())[1:]
    for p in parameters:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if p.name in ("context", "y") and context is not None:
            kwargs[p.name] = context
        elif p.default is p.empty:
            kwargs[p.name] = None
    if context is not None and not any(name in kwargs for name in ("context", "y")):
        raise TypeError(
            f"{method.__qualname__} takes no 'context' or 'y' parameter to pass context to"
        )
    return kwargs


def assert_sample_log_prob_consistent(
    model: nn.Module,
    num_samples: int = 8,
    context: Any = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Assert that ``model.sample(num_samples)`` returns, for each sample ``x``, ``log_q == log_prob(x)``.

    Works for models with normflows' interface — ``sample(n)`` returning ``(x, log_q)`` and ``log_prob(x)``
    — such as normflows' ``NormalizingFlow``, ``ConditionalNormalizingFlow``, ``MultiscaleFlow`` and
    flowplug's ``FlowModel``s. ``context`` is passed to a ``context`` (or ``y``) parameter of both methods.
    Sampling initialises data-dependent layers (``ActNorm``) in the sampling direction if nothing did before.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    sample_kwargs = _model_kwargs(model.sample, context)
    sample_kwargs.pop("num_samples", None)
    x, log_q = model.sample(num_samples, **sample_kwargs)
    items = as_list(x, "model.sample output")
    if not isinstance(log_q, torch.Tensor) or log_q.shape != (num_samples,):
        raise AssertionError(
            f"model.sample's log_q is {describe(log_q)}, expected shape ({num_samples},)"
        )
    log_p = model.log_prob(detach(x), **_model_kwargs(model.log_prob, context))
    if not isinstance(log_p, torch.Tensor) or log_p.shape != (num_samples,):
        raise AssertionError(
            f"model.log_prob returned {describe(log_p)}, expected shape ({num_samples},)"
        )
    if log_p.dtype != items[0].dtype:
        raise AssertionError(
            f"model.log_prob returned dtype {log_p.dtype} for samples of {items[0].dtype}"
        )
    atol, rtol = _tolerances(items, atol, rtol)
    assert_close(
        log_p, log_q, atol=atol, rtol=rtol, what="log_prob(samples) vs the log_q returned by sample"
    )
