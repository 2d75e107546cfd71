"""Batches of a run: which images each process takes at each step, and their dequantisation.

Every draw is seeded by ``(seed, step, rank, purpose)``, so a resumed run draws exactly what the
uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from flowplug.data import Batch, ImageData, dequantize, random_hflip
from flowplug.train import distributed

__all__ = ["NOISE", "batches", "make_batch", "step_generator"]

NOISE = 1
"""The ``purpose`` of the generator that draws a training batch's flips and dequantisation noise."""


def step_generator(seed: int, step: int, purpose: int) -> torch.Generator:
    """A CPU generator seeded by (seed, step, this process's rank, purpose)."""
    mixed = (seed * 1_000_003 + step * 7919 + distributed.rank() * 131 + purpose) % (2**63)
    return torch.Generator().manual_seed(mixed)


def batches(data: ImageData, batch_size: int, seed: int, start_step: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """This process's share of each global batch of ``batch_size`` integer images and their labels (``None``
    for unlabelled data), from ``start_step`` on, forever; epochs are reshuffled by ``seed`` and the incomplete
    last batch is dropped."""
    world = distributed.world_size()
    per_rank = batch_size // world
    steps_per_epoch = len(data) // batch_size
    sampler = DistributedSampler(range(len(data)), num_replicas=world, rank=distributed.rank(),
                                 shuffle=True, seed=seed, drop_last=True)
    step = start_step
    while True:
        epoch, position = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        for b in range(position, steps_per_epoch):
            step += 1
            chosen = order[b * per_rank:(b + 1) * per_rank]
            yield data.x[chosen], None if data.y is None else data.y[chosen]


def make_batch(
    x: torch.Tensor, n_bins: int, generator: torch.Generator, *, hflip: bool, dtype: torch.dtype,
    device: torch.device, y: torch.Tensor | None = None,
) -> Batch:
    """The training :class:`~flowplug.data.Batch` of integer images ``x`` (and their labels ``y``, if any):
    optional random flips, then one dequantisation per pixel, on ``device``."""
    if hflip:
        x = random_hflip(x, generator)
    v = dequantize(x, n_bins, generator=generator, dtype=dtype).to(device)
    return Batch(v, n_bins, None if y is None else y.to(device))
