"""Multi-scale baselines, Glow and RealNVP, from normflows' layers behind flowplug's model API.

Both are normflows ``MultiscaleFlow`` models with ``L`` levels. In the density direction each
level squeezes its input (``(c, h, w) -> (4c, h/2, w/2)``), applies ``K`` blocks and, except at
the coarsest level, factors half of the channels out as a latent; the coarsest level keeps all of
them. Level ``i`` (0 = coarsest) therefore acts on ``C * 2^(L+1-i)`` channels at
``H/2^(L-i) x W/2^(L-i)``, and ``H`` and ``W`` must be divisible by ``2^L``. The base
distributions are normflows' ``GlowBase`` (a learned per-channel Gaussian).

With ``num_classes=K`` the models are class-conditional the way normflows makes Glow so: every level's base
is normflows' class-conditional ``GlowBase`` (``class_cond=True``: a per-class shift of each channel's mean and
log-scale), so ``log p(v | y)`` differs between classes only through the bases; the bijection itself does not
see the label.

The models see ``v`` in ``[0, 1)`` (docs/design.md §3) and first map it to the real line with
normflows' ``Logit`` transform ``logit(alpha + (1 - 2 alpha) v)``, whose exact log-determinant is
part of ``log_prob``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import normflows as nf
import torch
from torch import nn

from flowplug._checks import check_num_samples, check_positive_integers
from flowplug._normflows_components import affine_coupling_block, torch_lu_deprecation_silenced
from flowplug.bin_warp import EdgeBinWarp
from flowplug.condition import check_condition_options
from flowplug.models.base import FlowModel, constructor_spec
from flowplug.registry import register

__all__ = ["Glow", "RealNVP"]


class _MultiscaleFlow(nf.MultiscaleFlow):
    """normflows' ``MultiscaleFlow`` with the one 1.7.3 bug flowplug meets worked around.

    ``MultiscaleFlow.log_prob(x, y)`` in normflows 1.7.3 requires ``y`` even for unconditional
    models
    (``class_cond=False``); here ``y`` defaults to ``None``.
    """

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().log_prob(x, y)


class _MultiscaleModel(FlowModel):
    """Shared body of :class:`Glow` and :class:`RealNVP`; subclasses build one level's flows."""

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int,
        depth: int,
        alpha: float,
        config: dict[str, Any],
        level_flows: Callable[[int], list[nn.Module]],
        bin_warp: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
    ) -> None:
        """``level_flows(channels)`` builds one level's flows in the sampling direction on
        ``channels``; ``num_classes`` makes every level's base class-conditional."""
        super().__init__()
        check_condition_options(num_classes, None, None)
        self.num_classes = num_classes
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(
                f"image_shape must be (C, H, W) with positive sizes, got {image_shape}"
            )
        check_positive_integers(levels=levels, depth=depth, hidden_channels=config["hidden_channels"])
        channels, height, width = image_shape
        if height % 2**levels or width % 2**levels:
            raise ValueError(
                f"{type(self).__name__} with levels={levels} needs H and W divisible by "
                f"{2**levels}, got image_shape {image_shape}"
            )
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha}")
        self.image_shape = image_shape
        if bin_warp is not None:
            self.bin_warp = EdgeBinWarp(**bin_warp)
        self.config = _omit_later_defaults(config, bin_warp=None, num_classes=None)

        base, flows, merges = [], [], []
        for i in range(levels):
            scale = 2 ** (levels - i)
            level_channels = channels * 2 ** (levels + 1 - i)
            latent_channels = level_channels if i == 0 else level_channels // 2
            base.append(
                nf.distributions.GlowBase((latent_channels, height // scale, width // scale), num_classes=num_classes)
            )
            flows.append(level_flows(level_channels))
            if i > 0:
                merges.append(nf.flows.Merge())
        self.flow = _MultiscaleFlow(
            base, flows, merges, transform=nf.transforms.Logit(alpha), class_cond=num_classes is not None
        )

    def log_prob(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(v)``, or ``log p(v | y)`` given the class labels ``y`` of a class-conditional model."""
        self.check_input(v)
        y = self.check_condition(y, v)
        warped, log_det = self._warp_in(v)
        return self.flow.log_prob(warped, y) + log_det

    def sample(
        self, num_samples: int = 1, temperature: float | None = None, y: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, log q(v))``; a class-conditional model samples class ``y`` (one label, or one per sample)."""
        check_num_samples(num_samples)
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        y = self.sample_condition(num_samples, y)
        x, log_q = self.flow.sample(num_samples, y=y, temperature=temperature)
        v, log_det = self._warp_out(x)
        return v, log_q - log_det

    def forward_and_log_det(
        self, z: list[torch.Tensor], y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``v`` from the per-level latents ``z`` (coarsest first) and ``log|det ∂v/∂z|``. The map does
        not depend on the label (only the bases do); a class-conditional model still checks ``y``."""
        self.check_condition(y, z[0])
        x, log_det = self.flow.forward_and_log_det(z)
        v, step = self._warp_out(x)
        return v, log_det + step

    def inverse_and_log_det(
        self, v: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-level latents (coarsest first) of ``v`` and ``log|det ∂z/∂v|`` (the map does not depend on the
        label; a class-conditional model still checks ``y``)."""
        self.check_input(v)
        self.check_condition(y, v)
        warped, log_det = self._warp_in(v)
        z, step = self.flow.inverse_and_log_det(warped)
        return z, log_det + step


SCALE_MAPS = ("sigmoid", "exp", "sigmoid_inv")
"""The coupling scale maps of normflows' ``AffineCoupling`` (it takes any other string and fails only when run)."""


def _omit_later_defaults(config: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """``config`` without the options added after the first release that hold their default (``defaults``), so
    that such a model's config reads as older versions wrote it: checkpoints compare configs."""
    for key, default in defaults.items():
        if key in config and config[key] == default:
            del config[key]
    return config


def _check_scale_map(scale_map: str) -> None:
    if scale_map not in SCALE_MAPS:
        raise ValueError(f"scale_map must be one of {SCALE_MAPS}, got {scale_map!r}")


@register("glow", kind="model")
class Glow(_MultiscaleModel):
    """Glow (Kingma & Dhariwal 2018): per level ``depth`` GlowBlocks (affine coupling, 1x1 conv,
    ActNorm).

    ``hidden_channels`` is the width of each coupling network; ``scale_map`` is the coupling's scale
    nonlinearity (``"sigmoid"`` as in Glow, or ``"exp"``). ActNorm initialises from the first batch
    it sees. ``num_classes`` makes it class-conditional (normflows' class-conditional ``GlowBase`` at every
    level): ``log_prob(v, y)``, ``sample(n, y=...)``.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int = 2,
        depth: int = 4,
        hidden_channels: int = 64,
        alpha: float = 0.05,
        scale_map: str = "sigmoid",
        bin_warp: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
    ) -> None:
        config = constructor_spec("glow", Glow.__init__, locals())
        _check_scale_map(scale_map)

        def level_flows(channels: int) -> list[nn.Module]:
            with torch_lu_deprecation_silenced():
                blocks = [
                    nf.flows.GlowBlock(
                        channels, hidden_channels, scale_map=scale_map, split_mode="channel"
                    )
                    for _ in range(depth)
                ]
            return [*blocks, nf.flows.Squeeze()]

        super().__init__(image_shape, levels, depth, alpha, config, level_flows, bin_warp, num_classes)


@register("realnvp", kind="model")
class RealNVP(_MultiscaleModel):
    """RealNVP (Dinh et al. 2017): affine couplings with checkerboard then channel masks, no 1x1
    convolutions.

    In the density direction each level applies ``depth`` checkerboard couplings (alternating
    masks) before its squeeze and ``depth`` channel couplings (alternating halves) after it; coupling
    networks have ``hidden_channels`` channels. ``scale_map`` is the couplings' scale nonlinearity:
    ``"exp"`` (as in RealNVP) or Glow's ``"sigmoid"``. ``scale_clamp=c`` bounds each exponential scale
    softly within ``exp(±c)`` (``c * tanh(s / c)`` of the net's raw log-scale ``s``). Unbounded, the scales
    overflowed within a few hundred steps in five of six runs on MNIST and Fashion-MNIST at learning rates of
    1e-3 to 4e-3; the ``realnvp`` recipe takes ``scale_clamp=2``.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int = 2,
        depth: int = 3,
        hidden_channels: int = 64,
        alpha: float = 0.05,
        bin_warp: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        scale_map: str = "exp",
        scale_clamp: float | None = None,
    ) -> None:
        config = constructor_spec("realnvp", RealNVP.__init__, locals())
        _check_scale_map(scale_map)
        _omit_later_defaults(config, scale_map="exp", scale_clamp=None)

        def couplings(channels: int, modes: tuple[str, str]) -> list[nn.Module]:
            return [
                affine_coupling_block(channels, hidden_channels, split_mode=modes[k % 2], scale_map=scale_map,
                                      scale_clamp=scale_clamp)
                for k in range(depth)
            ]

        def level_flows(channels: int) -> list[nn.Module]:
            # Sampling order: channel couplings, un-squeeze, checkerboard couplings at the finer
            # resolution.
            channel = couplings(channels, ("channel", "channel_inv"))
            checkerboard = couplings(channels // 4, ("checkerboard", "checkerboard_inv"))
            return [*channel, nf.flows.Squeeze(), *checkerboard]

        super().__init__(image_shape, levels, depth, alpha, config, level_flows, bin_warp, num_classes)
