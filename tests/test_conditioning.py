"""Composites pass context only to the components that take it."""

import torch
from normflows.flows import Flow

from flowplug import HaarSqueeze
from flowplug.conditioning import run_forward, run_inverse, takes_context


class ShiftByContext(Flow):
    def forward(self, z, context=None):
        return z + context, torch.zeros(z.shape[0], dtype=z.dtype)

    def inverse(self, x, context=None):
        return x - context, torch.ones(x.shape[0], dtype=x.dtype)


def test_takes_context_reads_the_signature():
    assert takes_context(ShiftByContext())
    assert not takes_context(HaarSqueeze())


def test_mixed_stack_round_trips_and_sums_log_dets():
    flows = [ShiftByContextSqueezed(), HaarSqueeze(), ShiftByContext()]
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    context = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    # the density direction runs the list backwards: shift, squeeze, then shift the squeezed tensor
    z, log_det = run_inverse(flows, x, context)
    assert torch.equal(log_det, torch.full((2,), 2.0, dtype=torch.float64))
    back, log_det_back = run_forward(flows, z, context)
    torch.testing.assert_close(back, x)
    assert log_det_back.shape == (2,)


class ShiftByContextSqueezed(ShiftByContext):
    """Shifts a squeezed (4C, h, w) tensor by the context's mean, to keep shapes compatible."""

    def forward(self, z, context=None):
        return z + context.mean(), torch.zeros(z.shape[0], dtype=z.dtype)

    def inverse(self, x, context=None):
        return x - context.mean(), torch.ones(x.shape[0], dtype=x.dtype)
