"""Swap normflows' Squeeze for flowplug's HaarSqueeze in a multi-scale Glow and train it briefly.

The data are smooth 2-channel 8×8 images the script generates, quantised to 256 levels and dequantised as in
docs/design.md §3; it prints the bits per dimension on held-out images before and after training. Run (from the
repository root):

    python examples/glow_with_haar_squeeze.py            # 200 steps
    python examples/glow_with_haar_squeeze.py --quick    # 50 steps
"""

from __future__ import annotations

import argparse
import warnings

import flowplug  # before torch: lets torch's idle OpenMP threads sleep (flowplug.threads)

# isort: split
import normflows as nf
import torch

from flowplug.data import dequantize
from flowplug.metrics import bits_per_dim

# normflows' Invertible1x1Conv (in every Glow block) calls the deprecated torch.lu when it is built: not ours to fix
warnings.filterwarnings("ignore", message=r"torch\.lu is deprecated", category=UserWarning)


def make_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random blobs: low-resolution noise upsampled bilinearly, quantised to 0..255."""
    low = torch.rand(n, 2, 2, 2, generator=generator)
    smooth = torch.nn.functional.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8)


def glow(channels: int = 2, levels: int = 2, depth: int = 4, hidden: int = 32) -> nf.MultiscaleFlow:
    """normflows' multi-scale Glow with every Squeeze replaced by HaarSqueeze, and a logit preprocessing."""
    flows, merges, bases = [], [], []
    for i in range(levels):
        width = channels * 2 ** (levels + 1 - i)
        level = [nf.flows.GlowBlock(width, hidden, split_mode="channel") for _ in range(depth)]
        flows.append([*level, flowplug.HaarSqueeze()])
        scale = 2 ** (levels - i)
        if i > 0:
            merges.append(nf.flows.Merge())
            bases.append(nf.distributions.DiagGaussian((channels * scale, 8 // scale, 8 // scale)))
        else:
            bases.append(nf.distributions.DiagGaussian((channels * 2 * scale, 8 // scale, 8 // scale)))
    return nf.MultiscaleFlow(bases, flows, merges, transform=nf.transforms.Logit(alpha=0.05), class_cond=False)


def held_out_bpd(model: nf.MultiscaleFlow, v: torch.Tensor) -> float:
    with torch.no_grad():
        return bits_per_dim(model.log_prob(v, None), v[0].numel(), 256).mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps (default 200, quick 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="50 steps")
    args = parser.parse_args(argv)
    steps = args.steps or (50 if args.quick else 200)

    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    train, test = make_images(2048, generator), make_images(512, generator)
    test_v = dequantize(test, 256, generator=generator)
    model = glow()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    print(f"held-out bits/dim before training: {held_out_bpd(model, test_v):.3f}")
    for step in range(1, steps + 1):
        batch = train[torch.randint(len(train), (64,), generator=generator)]
        loss = model.forward_kld(dequantize(batch, 256, generator=generator), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps:
            print(f"step {step:4d}  train NLL {loss.item():9.2f}")
    print(f"held-out bits/dim after {steps} steps: {held_out_bpd(model, test_v):.3f}")


if __name__ == "__main__":
    main()
