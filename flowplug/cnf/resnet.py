"""A residual ODE net for image CNFs: GroupNorm residual blocks, a sinusoidal time embedding and the
conditioning image injected into every block.

``ResODENet(t, z, context)`` returns ``dz/dt`` of ``z``'s shape ``(B, C, H, W)``:

- the input convolution sees ``z`` (and ``context``, the coarse image of an MRCNF detail level,
  concatenated);
- a condition vector (``vector_context=k``: the last ``k`` context channels hold one vector per sample, constant
  over the image, as :func:`flowplug.condition.spatial_features` lays out a class embedding) is read at one pixel
  and a linear map of it is added to the time embedding, as diffusion models add a class embedding: it shifts
  every block's channels at no convolution's cost, and the image channels keep their weight in the input
  convolution;
- ``num_blocks`` residual blocks ``h + conv(act(GN(conv(act(GN(h))) + e_t + e_c))``, where ``e_t`` is
  a per-channel shift from a sinusoidal embedding of ``t`` (through a small MLP) and ``e_c`` a 1×1
  convolution of ``context``: time and the coarse image reach every block, not only the input;
- the output layer (GroupNorm, activation, 3×3 convolution) starts at **zero**, so ``f ≡ 0`` and a new
  CNF is exactly the identity flow.

GroupNorm normalises each sample on its own (no batch statistics), so samples stay independent, as the
divergence estimators need; activations are smooth (``silu`` by default), as the likelihood path
differentiates the net.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flowplug._checks import check_positive_integers
from flowplug.cnf.nets import _activation, _check_context_size, _ODENetInputs, _time_per_sample
from flowplug.registry import register

__all__ = ["ResODENet", "sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_frequency: float = 16.0) -> torch.Tensor:
    """``(B, dim)`` features ``[cos(ω_k t), sin(ω_k t)]`` of times ``t`` ``(B,)``, ``ω_k`` geometric in
    ``[1, max_frequency]``.

    Times are ``O(1)`` here (not diffusion's 0…1000): the adaptive solver has to follow every oscillation
    of the field in ``t``, so high frequencies cost function evaluations (with ``ω`` up to 1000 the
    evaluation NFE exploded in screening); 16 rad per unit time keeps the field smooth in ``t``.
    """
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half, dtype=t.dtype, device=t.device))
    angles = t[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _groups(channels: int, wanted: int) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


class _ResBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, context_channels: int, groups: int, activation: str) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(hidden, groups), hidden)
        self.conv1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.time = nn.Linear(emb_dim, hidden)
        self.context = nn.Conv2d(context_channels, hidden, 1) if context_channels else None
        self.norm2 = nn.GroupNorm(_groups(hidden, groups), hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.act = _activation(activation)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        r = self.conv1(self.act(self.norm1(h)))
        r = r + self.time(emb)[:, :, None, None]
        if self.context is not None:
            r = r + self.context(context)
        r = self.conv2(self.act(self.norm2(r)))
        return h + r


class ResODENet(_ODENetInputs):
    """Residual conv ODE net for images ``(B, channels, H, W)``, optionally conditioned on
    ``(B, context_channels, H, W)``; see the module docstring.

    Args: channels, context_channels (0: unconditional), hidden_channels (width), num_blocks,
    time_dim (sinusoidal embedding size), groups (GroupNorm groups, reduced to a divisor of the width),
    activation (smooth: ``"silu"``, ``"softplus"``, ``"tanh"``, ``"gelu"``), vector_context (how many of the
    last context channels are a per-sample vector, constant over the image, that joins the time embedding;
    at most ``context_channels``).
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        context_channels: int = 0,
        time_dim: int = 32,
        groups: int = 8,
        activation: str = "silu",
        vector_context: int = 0,
    ) -> None:
        check_positive_integers(channels=channels, hidden_channels=hidden_channels, num_blocks=num_blocks,
                                time_dim=time_dim, groups=groups)
        _check_context_size("context_channels", context_channels)
        _check_context_size("vector_context", vector_context)
        if vector_context > context_channels:
            raise ValueError(f"vector_context ({vector_context}) counts context channels; the net has only "
                             f"context_channels={context_channels}")
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        super().__init__(channels, context_channels, spatial=True)
        self.time_dim = time_dim
        self.vector_context = vector_context
        image_context = context_channels - vector_context
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), _activation(activation),
                                      nn.Linear(time_dim, time_dim))
        self.condition = nn.Linear(vector_context, time_dim) if vector_context else None
        self.input = nn.Conv2d(channels + image_context, hidden_channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            _ResBlock(hidden_channels, time_dim, image_context, groups, activation) for _ in range(num_blocks)
        )
        self.out_norm = nn.GroupNorm(_groups(hidden_channels, groups), hidden_channels)
        self.out_act = _activation(activation)
        self.output = nn.Conv2d(hidden_channels, channels, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self, t: torch.Tensor | float, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``dz/dt`` at time ``t`` (scalar or ``(B,)``), same shape as ``z``."""
        self._check(z, context)
        emb = self.time_mlp(sinusoidal_embedding(_time_per_sample(t, z), self.time_dim))
        if self.condition is not None:
            split = self.context_size - self.vector_context
            emb = emb + self.condition(context[:, split:, 0, 0])  # type: ignore[index]
            context = context[:, :split] if split else None  # type: ignore[index]
        h = self.input(z if context is None else torch.cat([z, context], dim=1))
        for block in self.blocks:
            h = block(h, emb, context)
        return self.output(self.out_act(self.out_norm(h))).contiguous()


register("res_odenet", ResODENet, kind="net")
