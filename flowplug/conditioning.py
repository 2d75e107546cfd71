"""The conditional composite flow, and how it passes a conditioning tensor to the components that accept one.

A component *takes context* when its ``forward`` and ``inverse`` have a ``context`` parameter, as normflows'
conditional flows do. :class:`ComposedFlow` (MRCNF's levels, the testing toolkit's chains) calls every component
through :func:`flow_forward` / :func:`flow_inverse`, which pass ``context`` only to those that take it, so
normflows' unconditional layers and flowplug's conditional CNFs mix in one list.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from functools import cache

import torch
from normflows.flows import Flow
from torch import nn

__all__ = ["ComposedFlow", "flow_forward", "flow_inverse", "run_forward", "run_inverse", "takes_context"]


@cache
def _method_takes_context(cls: type, method: str) -> bool:
    try:
        return "context" in inspect.signature(getattr(cls, method)).parameters
    except (TypeError, ValueError):
        return False


def takes_context(flow: nn.Module) -> bool:
    """Whether ``flow.forward`` and ``flow.inverse`` accept a ``context=`` argument."""
    cls = type(flow)
    return _method_takes_context(cls, "forward") and _method_takes_context(cls, "inverse")


def flow_forward(flow: nn.Module, z, context: torch.Tensor | None = None):
    """``flow.forward(z)`` (sampling direction), with ``context`` if the flow takes it."""
    return flow(z, context=context) if takes_context(flow) else flow(z)


def flow_inverse(flow: nn.Module, x, context: torch.Tensor | None = None):
    """``flow.inverse(x)`` (density direction), with ``context`` if the flow takes it."""
    return flow.inverse(x, context=context) if takes_context(flow) else flow.inverse(x)


def run_forward(flows: Iterable[nn.Module], z: torch.Tensor, context: torch.Tensor | None = None):
    """Apply ``flows`` in order in the sampling direction; returns ``(x, log_det)`` with ``log_det`` of shape (B,)."""
    log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for flow in flows:
        z, step = flow_forward(flow, z, context)
        log_det = log_det + step
    return z, log_det


def run_inverse(flows: Iterable[nn.Module], x: torch.Tensor, context: torch.Tensor | None = None):
    """Apply ``flows`` in reverse order in the density direction; returns ``(z, log_det)``."""
    log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for flow in reversed(list(flows)):
        x, step = flow_inverse(flow, x, context)
        log_det = log_det + step
    return x, log_det


class ComposedFlow(Flow):
    """A list of flows as one flow, in normflows' order: ``flows[0]`` acts first when sampling.

    ``forward(z)`` applies the :meth:`chain` ``flows[0], flows[1], ...``; ``inverse(x)`` applies it in reverse.
    Both take ``context=``, passed only to the components that accept it, and return a log-det tensor of shape
    ``(B,)`` on the input's device (unlike normflows 1.7.3's ``Composite``, which allocates it on the CPU).
    """

    def __init__(self, flows: Iterable[nn.Module]) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def chain(self) -> list[nn.Module]:
        """The components in the sampling direction (subclasses may add fixed stages around :attr:`flows`)."""
        return list(self.flows)

    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction; returns ``(x, log|det ∂x/∂z|)``."""
        return run_forward(self.chain(), z, context)

    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction; returns ``(z, log|det ∂z/∂x|)``."""
        return run_inverse(self.chain(), x, context)
