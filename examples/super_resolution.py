"""Super-resolve coarse images with a trained MRCNF: sample the missing Haar details, keep the coarse part.

An MRCNF models an image coarse to fine, so ``model.super_resolve(coarse, temperature)`` upsamples a
coarse image by sampling only the finer levels' detail coefficients given it; by construction the
output's Haar coarse part at the input's size equals the input (this script checks and prints it).
``temperature=0`` takes every base distribution's mode, higher temperatures draw more varied details.

The model is either trained here on the embedded 8×8 digits (MRCNF with two levels, flow-matching
objective) or loaded from a checkpoint written by ``flowplug train`` (``--checkpoint``: the held-out images of
its own run's split; ``--data`` for another copy of its data set). Held-out images are reduced to their coarse
images at ``--factor`` and super-resolved back. The picture has one row per image: coarse (nearest-neighbour
upsampled) | super-resolved at temperature 0 | at temperature 0.7 | original.

Run (from the repository root):

    python examples/super_resolution.py            # full: 2000 training steps
    python examples/super_resolution.py --quick    # 300 steps
    python examples/super_resolution.py --checkpoint runs/mrcnf-.../checkpoints/best.pt

Outputs go to ``--out`` (default ``runs/examples/super_resolution``): ``super_resolution.png`` and, when
trained here, the training run folder ``train/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import flowplug  # before torch: lets torch's idle OpenMP threads sleep (flowplug.threads)

# isort: split
import torch
import torch.nn.functional as F

from flowplug.data import dequantize
from flowplug.train import Trainer
from flowplug.train.feedback import save_image_grid
from flowplug.train.splits import evaluation_split

TEMPERATURES = (0.0, 0.7)


def train_model(steps: int, seed: int, device: str, out: Path) -> tuple[flowplug.MRCNF, flowplug.ImageData]:
    """A small two-level MRCNF trained by flow matching on the digits; its EMA copy and the held-out data."""
    torch.manual_seed(seed)
    data = flowplug.load_dataset("digits")
    train, held_out = data.split(0.1, seed=seed)
    solver = {"method": "rk4", "step_size": 0.125}
    model = flowplug.MRCNF(data.image_shape, levels=2, hidden_channels=32, num_blocks=1,
                           train_solver=solver, eval_solver=solver)
    config = flowplug.TrainConfig(steps=steps, batch_size=64, lr=2e-3, seed=seed, objective="flow_matching",
                                  warmup_steps=min(50, steps // 5), progress=False, tensorboard=False,
                                  checkpoint_every=steps)
    trainer = Trainer(model, config, out_dir=out / "train", device=device)
    report = trainer.fit(train)
    print(f"trained a {model.num_levels}-level MRCNF ({report['parameters']} parameters) by flow matching: "
          f"{report['steps']} steps in {report['train_time_s']:.1f} s")
    return (trainer.ema.module if trainer.ema is not None else trainer.model), held_out


def load_model(path: str, data: str | None, data_root: str | None) -> tuple[torch.nn.Module, flowplug.ImageData]:
    """A checkpoint's model (its EMA weights when it has them) and the held-out images of its run's split of
    ``data`` (default: the data set it was trained on)."""
    checkpoint = flowplug.load_checkpoint(path)
    model = Trainer.restore(checkpoint, device="cpu").eval_model()
    held_out = evaluation_split(checkpoint, data, root=data_root)
    print(f"loaded {path} (step {checkpoint.step}, trained on {checkpoint.data['name']})")
    return model, held_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a checkpoint of an MRCNF written by `flowplug train`")
    parser.add_argument("--data", help="with --checkpoint: the data set whose held-out images to super-resolve "
                        "(default: the one the checkpoint was trained on)")
    parser.add_argument("--data-root", help="torchvision's data folder for cifar10/mnist")
    parser.add_argument("--factor", type=int, default=2, choices=(2, 4, 8), help="downsampling factor (2)")
    parser.add_argument("--steps", type=int, help="training steps when no checkpoint (2000, quick 300)")
    parser.add_argument("--num", type=int, default=8, help="images to super-resolve (8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--zoom", type=int, help="enlarge the picture's pixels this much "
                        "(default: to at least 256 pixels a side)")
    parser.add_argument("--quick", action="store_true", help="a short training run (300 steps)")
    parser.add_argument("--out", default="runs/examples/super_resolution", help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)

    if args.checkpoint:
        model, held_out = load_model(args.checkpoint, args.data, args.data_root)
    else:
        steps = args.steps or (300 if args.quick else 2000)
        model, held_out = train_model(steps, args.seed, args.device, out)
    model = model.cpu().eval()
    dtype = next(model.parameters()).dtype
    levels = args.factor.bit_length()  # a pyramid of log2(factor) + 1 levels has the coarse image we want
    generator = torch.Generator().manual_seed(args.seed)
    v = dequantize(held_out.x[: args.num], held_out.n_bins, generator=generator, dtype=dtype)
    coarse = flowplug.haar_pyramid(v, levels)[1]

    rows = [F.interpolate(coarse, scale_factor=args.factor, mode="nearest")]
    with torch.no_grad():
        for temperature in TEMPERATURES:
            torch.manual_seed(args.seed)
            output = model.super_resolve(coarse, temperature=temperature)
            kept = (flowplug.haar_pyramid(output, levels)[1] - coarse).abs().max().item()
            mse = (output - v).pow(2).mean().item()
            print(f"temperature {temperature}: max |coarse part of output - input| = {kept:.2e}, "
                  f"MSE to the original = {mse:.5f}")
            if kept > 1e-4:
                raise SystemExit(f"the super-resolved images do not keep their coarse part ({kept:.2e})")
            rows.append(output)
    rows.append(v)
    baseline = (rows[0] - v).pow(2).mean().item()
    print(f"nearest-neighbour upsampling: MSE to the original = {baseline:.5f}")
    print(f"coarse {tuple(coarse.shape[1:])} -> {tuple(v.shape[1:])}; the coarse part of every output equals "
          f"its input")

    grid = torch.stack(rows, dim=1).flatten(0, 1)  # per image: coarse | T=0 | T=0.7 | original
    path = out / "super_resolution.png"
    save_image_grid(grid, path, columns=len(rows), zoom=args.zoom)
    print(f"wrote {path} (columns: coarse upsampled | T={TEMPERATURES[0]} | T={TEMPERATURES[1]} | original)")


if __name__ == "__main__":
    main()
