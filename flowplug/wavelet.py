"""The unimodular Haar wavelet transform (docs/design.md §1) as functions and as normflows flows.

Per channel, each 2×2 block ``x1 = x[2i, 2j]``, ``x2 = x[2i, 2j+1]``, ``x3 = x[2i+1, 2j]``,
``x4 = x[2i+1, 2j+1]`` maps to

    y1 = (x1 + x2 - x3 - x4) / c,   y2 = (x1 - x2 + x3 - x4) / c,   y3 = (x1 - x2 - x3 + x4) / c,
    xbar = (x1 + x2 + x3 + x4) / 4,                                  c = 2 ** (2/3),

a linear map of determinant exactly 1 (c³ = 4), so every log-determinant here is 0.

Layout: ``haar_decompose`` turns ``(B, C, H, W)`` into ``coarse (B, C, H/2, W/2)`` and band-major
``details (B, 3C, H/2, W/2)`` with ``details[:, k*C + ch]`` = ``y_{k+1}`` of channel ``ch``. As one tensor
(:class:`HaarSqueeze`) the channels are ``[coarse, y1, y2, y3]``, i.e. ``(B, 4C, H/2, W/2)``.

Both directions are written with the Hadamard butterfly ``H = [[1,1,1,1],[1,1,-1,-1],[1,-1,1,-1],[1,-1,-1,1]]``
(``H`` symmetric, ``H H = 4 I``) and a diagonal scaling: the analysis is ``S H`` with ``S = diag(1/4, 1/c, 1/c,
1/c)`` and the synthesis is ``H S'`` with ``S' = diag(1, c/4, c/4, c/4)``. The transpose of the one is the
other form with the same scales, which gives the exact backward passes (and derivatives of any order) while the
kernels write their results straight into preallocated outputs, which autograd could not record.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from normflows.flows import Flow
from torch.autograd import Function

from flowplug._checks import check_floating, check_image, check_same_dtype_and_device
from flowplug.registry import register

__all__ = [
    "HAAR_C",
    "HaarMerge",
    "HaarSplit",
    "HaarSqueeze",
    "haar_cascade",
    "haar_decompose",
    "haar_pyramid",
    "haar_pyramid_reconstruct",
    "haar_reconstruct",
]

HAAR_C = 2.0 ** (2.0 / 3.0)
"""The detail scale ``c``; ``c**3 == 4`` makes the transform unimodular."""

_ANALYSIS_SCALES = (0.25, 1.0 / HAAR_C)
_SYNTHESIS_SCALES = (1.0, HAAR_C / 4.0)


def _analysis(
    x: torch.Tensor, coarse_scale: float, detail_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` → ``coarse (B, C, h, w)``, ``details (B, 3C, h, w)``: ``S · H`` on every 2×2 block.

    Both outputs are freshly allocated and contiguous; the sums are written straight into them.
    """
    batch, channels, height, width = x.shape
    coarse = x.new_empty(batch, channels, height // 2, width // 2)
    details = x.new_empty(batch, 3, channels, height // 2, width // 2)
    rows = x.view(batch, channels, height // 2, 2, width)
    top, bottom = rows[:, :, :, 0], rows[:, :, :, 1]
    column_sum = top + bottom  # (x1 + x3, x2 + x4) interleaved along W
    column_diff = top - bottom  # (x1 - x3, x2 - x4)
    torch.add(column_sum[..., 0::2], column_sum[..., 1::2], out=coarse)  # x1 + x2 + x3 + x4
    torch.add(column_diff[..., 0::2], column_diff[..., 1::2], out=details[:, 0])  # x1 + x2 - x3 - x4
    torch.sub(column_sum[..., 0::2], column_sum[..., 1::2], out=details[:, 1])  # x1 - x2 + x3 - x4
    torch.sub(column_diff[..., 0::2], column_diff[..., 1::2], out=details[:, 2])  # x1 - x2 - x3 + x4
    if coarse_scale != 1.0:
        coarse.mul_(coarse_scale)
    if detail_scale != 1.0:
        details.mul_(detail_scale)
    return coarse, details.view(batch, 3 * channels, height // 2, width // 2)


def _synthesis(
    coarse: torch.Tensor, details: torch.Tensor, coarse_scale: float, detail_scale: float
) -> torch.Tensor:
    """``coarse (B, C, h, w)``, ``details (B, 3C, h, w)`` → ``(B, C, 2h, 2w)``: ``H·S`` per block.

    The output interleaves the pixel pairs ``(x1, x2)`` and ``(x3, x4)`` along W, and strided writes
    are slow on CPU. So each pair is written as one complex number (a complex tensor *is* a float
    tensor with real and imaginary parts adjacent): ``(1 - i)(q + i p) = (p + q) + i(p - q)`` gives
    the pair ``(p + q, p - q)`` in one contiguous, vectorised multiply straight into the output.
    With ``a, d = coarse_scale, detail_scale`` and ``r = a / d``:

        top rows:     (x1, x2) =  d(1 - i) · [(y2 + y3) + i(y1 + r·xbar)]
        bottom rows:  (x3, x4) = -d(1 - i) · [(y3 - y2) + i(y1 - r·xbar)]

    so every scale rides on an ``alpha`` or on the rotation: no separate scaling pass.
    """
    if coarse.dtype not in (torch.float32, torch.float64):
        # (b)float16 has no complex counterpart: compute in float32 and round once at the end
        wide = _synthesis(coarse.float(), details.float(), coarse_scale, detail_scale)
        return wide.to(coarse.dtype)
    batch, channels, height, width = coarse.shape
    y1, y2, y3 = details.reshape(batch, 3, channels, height, width).unbind(1)
    ratio = coarse_scale / detail_scale
    rotation = complex(detail_scale, -detail_scale)
    pairs = torch.view_as_complex(coarse.new_empty(batch, channels, height, 2, width, 2))
    top = torch.complex(y2 + y3, torch.add(y1, coarse, alpha=ratio))
    torch.mul(top, rotation, out=pairs[:, :, :, 0])
    bottom = torch.complex(torch.sub(y3, y2), torch.sub(y1, coarse, alpha=ratio))
    torch.mul(bottom, -rotation, out=pairs[:, :, :, 1])
    return torch.view_as_real(pairs).view(batch, channels, 2 * height, 2 * width)


class _Analysis(Function):
    """Differentiable :func:`_analysis`; its adjoint is :func:`_synthesis` with the same scales."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coarse_scale: float, detail_scale: float):
        ctx.scales = (coarse_scale, detail_scale)
        return _analysis(x.contiguous(), coarse_scale, detail_scale)

    @staticmethod
    def backward(ctx, grad_coarse: torch.Tensor, grad_details: torch.Tensor):
        # autograd materialises the gradient of an unused output as zeros, so neither is None
        return _Synthesis.apply(grad_coarse, grad_details, *ctx.scales), None, None


class _Synthesis(Function):
    """Differentiable :func:`_synthesis`; its adjoint is :func:`_analysis` with the same scales."""

    @staticmethod
    def forward(ctx, coarse: torch.Tensor, details: torch.Tensor, coarse_scale: float, detail_scale: float):
        ctx.scales = (coarse_scale, detail_scale)
        return _synthesis(coarse, details, coarse_scale, detail_scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_coarse, grad_details = _Analysis.apply(grad, *ctx.scales)
        return grad_coarse, grad_details, None, None


def _check_pair(coarse: torch.Tensor, details: torch.Tensor) -> None:
    check_floating(coarse, "coarse")
    check_floating(details, "details")
    if coarse.ndim != 4:
        raise ValueError(f"coarse must be a 4-d batch (B, C, h, w), got shape {tuple(coarse.shape)}")
    batch, channels, height, width = coarse.shape
    if details.shape != (batch, 3 * channels, height, width):
        raise ValueError(
            f"details must have shape (B, 3C, h, w) = {(batch, 3 * channels, height, width)} to match "
            f"coarse {tuple(coarse.shape)}, got {tuple(details.shape)}"
        )
    check_same_dtype_and_device(coarse, "coarse", details, "details")


def haar_decompose(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split images ``(B, C, H, W)`` (H, W even) into ``coarse (B, C, H/2, W/2)`` and band-major
    ``details (B, 3C, H/2, W/2)``, both contiguous."""
    check_image(x, "x", even=True)
    return _Analysis.apply(x, *_ANALYSIS_SCALES)


def haar_reconstruct(coarse: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_decompose`: ``coarse (B, C, h, w)`` and ``details (B, 3C, h, w)`` → ``(B, C, 2h, 2w)``."""
    _check_pair(coarse, details)
    return _Synthesis.apply(coarse, details, *_SYNTHESIS_SCALES)


def haar_cascade(x: torch.Tensor, levels: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``levels - 1`` steps of the pyramid: ``[(y_0, x_1), …, (y_{S-2}, x_{S-1})]``, finest first.

    ``x_0 = x`` and ``(y_s, x_{s+1}) = M⁻¹(x_s)``: each coarse image is the one the transform produced (what a
    detail level is conditioned on). H and W must be divisible by ``2**(levels-1)``; ``levels=1`` gives ``[]``.
    """
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    check_image(x, "x", divisor=2 ** (levels - 1))
    steps = []
    for _ in range(levels - 1):
        x, y = haar_decompose(x)
        steps.append((y, x))
    return steps


def haar_pyramid(x: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Decompose into ``levels`` resolution levels: ``([y_0, ..., y_{S-2}], x_{S-1})``, finest details first.

    See :func:`haar_cascade`; ``levels=1`` returns ``([], x)``.
    """
    steps = haar_cascade(x, levels)
    return [y for y, _ in steps], steps[-1][1] if steps else x


def haar_pyramid_reconstruct(details: Sequence[torch.Tensor], coarsest: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_pyramid`: rebuild the image from finest-first ``details`` and the coarsest image."""
    x = coarsest
    for y in reversed(details):
        x = haar_reconstruct(x, y)
    return x


def _zero_log_det(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


@register("haar_squeeze")
class HaarSqueeze(Flow):
    """Drop-in for ``normflows.flows.Squeeze`` that applies the unimodular Haar transform.

    ``forward`` (sampling) maps ``(B, 4C, h, w)`` with channels ``[coarse, y1, y2, y3]`` to ``(B, C, 2h, 2w)``;
    ``inverse`` (density) maps back. ``log_det`` is a zero tensor of shape ``(B,)``.
    """

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_image(z, "z")
        channels4 = z.shape[1]
        if channels4 % 4:
            raise ValueError(
                f"HaarSqueeze.forward needs a channel count divisible by 4, got shape {tuple(z.shape)}"
            )
        channels = channels4 // 4
        return haar_reconstruct(z[:, :channels], z[:, channels:]), _zero_log_det(z)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(haar_decompose(x), dim=1), _zero_log_det(x)


@register("haar_merge")
class HaarMerge(Flow):
    """Haar merge for ``normflows.MultiscaleFlow`` ``merges``.

    ``forward([coarse (B,C,h,w), details (B,3C,h,w)])`` returns the image ``(B, C, 2h, 2w)``;
    ``inverse(image)`` returns ``[coarse, details]``. ``log_det`` is a zero tensor of shape ``(B,)``.
    """

    def forward(self, z: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        coarse, details = _pair(z, "HaarMerge.forward")
        return haar_reconstruct(coarse, details), _zero_log_det(coarse)

    def inverse(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        coarse, details = haar_decompose(x)
        return [coarse, details], _zero_log_det(x)


@register("haar_split")
class HaarSplit(Flow):
    """Mirror of :class:`HaarMerge`: ``forward(image)`` returns ``[coarse, details]``, ``inverse`` merges."""

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        coarse, details = haar_decompose(x)
        return [coarse, details], _zero_log_det(x)

    def inverse(self, z: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        coarse, details = _pair(z, "HaarSplit.inverse")
        return haar_reconstruct(coarse, details), _zero_log_det(coarse)


def _pair(z: Sequence[torch.Tensor], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(z, torch.Tensor) or len(z) != 2:
        got = f"a tensor of shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else f"{len(z)} items"
        raise ValueError(f"{where} takes a pair [coarse, details], got {got}")
    return z[0], z[1]
