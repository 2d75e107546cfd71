"""Helpers the assertions share: flows' inputs and outputs as one tensor or a list of tensors (normflows'
``Split``/``Merge`` and flowplug's Haar split/merge pass lists), per-sample flattening, log-det normalisation,
and closeness checks whose failure message names the worst element."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensors = torch.Tensor | Sequence[torch.Tensor]
"""A flow's input or output: one tensor, or a list of tensors sharing the batch dimension."""


def as_list(x: Tensors, what: str) -> list[torch.Tensor]:
    """``x`` as a non-empty list of floating tensors that share their batch size; ``TypeError`` otherwise."""
    items = (
        [x] if isinstance(x, torch.Tensor) else list(x) if isinstance(x, (list, tuple)) else None
    )
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise TypeError(
            f"{what} must be a tensor or a non-empty list of tensors, got {type(x).__name__}"
        )
    for t in items:
        if not t.is_floating_point() or t.ndim < 1:
            raise TypeError(
                f"{what} must hold floating tensors with a batch dimension, got {describe(x)}"
            )
    if len({t.shape[0] for t in items}) != 1:
        raise ValueError(f"the tensors of {what} must share their batch size, got {describe(x)}")
    return items


def describe(x: object) -> str:
    """``"float64 (2, 3, 4, 4) on cpu"``, or a bracketed list of those."""
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)} on {x.device}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(describe(t) for t in x) + "]"
    return f"{type(x).__name__} {x!r}"


def clone(x: Tensors) -> Tensors:
    """A detached copy with the same structure (tensor or list)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    return [t.detach().clone() for t in x]


def detach(x: Tensors) -> Tensors:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return [t.detach() for t in x]


def batch_size(x: Tensors) -> int:
    return as_list(x, "input")[0].shape[0]


def flatten(x: Tensors) -> torch.Tensor:
    """``(B, D)``: every tensor of ``x`` flattened per sample and concatenated in order."""
    items = as_list(x, "tensors")
    return torch.cat([t.reshape(t.shape[0], -1) for t in items], dim=1)


def same_structure(a: Tensors, b: Tensors) -> bool:
    """Whether ``a`` and ``b`` are both tensors, or lists of equal length, with equal shapes, dtypes, devices."""
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        return False
    items_a, items_b = as_list(a, "a"), as_list(b, "b")
    return len(items_a) == len(items_b) and all(
        s.shape == t.shape and s.dtype == t.dtype and s.device == t.device
        for s, t in zip(items_a, items_b, strict=True)
    )


def unchanged(before: Tensors, after: Tensors) -> bool:
    """Whether ``after`` still holds exactly the values of ``before`` (NaN equal to NaN)."""
    return all(
        bool(torch.isclose(s, t, rtol=0, atol=0, equal_nan=True).all())
        for s, t in zip(as_list(before, "before"), as_list(after, "after"), strict=True)
    )


def normalize_log_det(
    log_det: object, reference: torch.Tensor, *, strict: bool, what: str
) -> torch.Tensor:
    """Return ``log_det`` as a tensor of shape ``(B,)`` in ``reference``'s dtype and device.

    normflows layers may return a Python number (``Squeeze`` returns ``0``) or a 0-d tensor (``ActNorm``):
    those are broadcast over the batch unless ``strict``, which demands flowplug's contract — a tensor of
    shape ``(B,)`` on ``reference``'s device with its dtype — and raises ``AssertionError`` otherwise.
    """
    batch = reference.shape[0]
    if isinstance(log_det, torch.Tensor):
        problems = []
        if log_det.shape != (batch,):
            problems.append(f"shape {tuple(log_det.shape)} instead of ({batch},)")
        if log_det.dtype != reference.dtype:
            problems.append(f"dtype {log_det.dtype} instead of {reference.dtype}")
        if log_det.device != reference.device:
            problems.append(f"device {log_det.device} instead of {reference.device}")
        if strict and problems:
            raise AssertionError(
                f"{what} log_det breaks the (B,) tensor contract: " + "; ".join(problems)
            )
        if log_det.numel() not in (1, batch) or (log_det.numel() == batch and log_det.ndim != 1):
            raise AssertionError(
                f"{what} log_det has shape {tuple(log_det.shape)}; expected ({batch},) or a scalar"
            )
        return log_det.detach().to(reference.device, reference.dtype).reshape(-1).expand(batch)
    if isinstance(log_det, (int, float)) and not isinstance(log_det, bool):
        if strict:
            raise AssertionError(
                f"{what} log_det is the Python {type(log_det).__name__} {log_det!r}, "
                f"not a tensor of shape ({batch},)"
            )
        return torch.full((batch,), float(log_det), dtype=reference.dtype, device=reference.device)
    raise AssertionError(f"{what} log_det is a {type(log_det).__name__}, not a tensor or a number")


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    what: str,
    index_names: Sequence[str] = ("sample",),
) -> None:
    """Raise ``AssertionError`` unless ``|actual - expected| <= atol + rtol * |expected|`` everywhere.

    The message names the worst element (largest excess over its tolerance) by index, with both values and
    the absolute and relative errors, and says how many elements fail; non-finite values always fail.
    """
    actual = actual.detach()
    expected = expected.detach().to(actual.device, actual.dtype)
    error = (actual - expected).abs()
    allowed = atol + rtol * expected.abs()
    bad = ~(error <= allowed)  # NaN compares False, so it counts as bad
    if not bool(bad.any()):
        return
    excess = torch.where(
        torch.isfinite(error), error - allowed, torch.full_like(error, float("inf"))
    )
    flat = int(torch.argmax(torch.nan_to_num(excess, nan=float("inf"))))
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), actual.shape))
    where = ", ".join(
        f"{index_names[k] if k < len(index_names) else f'dim {k}'} {i}" for k, i in enumerate(index)
    )
    got, want = actual[index].item(), expected[index].item()
    abs_err = abs(got - want)
    rel_err = abs_err / abs(want) if want != 0 else float("inf")
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {bad.numel()} element(s) differ beyond atol={atol:g}, rtol={rtol:g}; "
        f"worst at {where or 'the only element'}: got {got!r}, expected {want!r} "
        f"(abs error {abs_err:.3g}, rel error {rel_err:.3g})"
    )
