"""Train MRCNF on CIFAR-10 from a JSON config file through the ``flowplug`` command line, then sample from it.

The config (``examples/configs/mrcnf_cifar10.json``, or ``mrcnf_cifar10_quick.json`` with ``--quick``)
holds ``{"model": <registry spec>, "train": <trainer options>}``; the model's ``image_shape`` is filled in
from the data. Both configs train with the flow-matching objective (no ODE solve per step); the held-out
bits per dimension at the end comes from ODE solves (with the Hutchinson trace estimate the configs
select). This script runs the same commands as

    python -m flowplug train --config CONFIG --data DATA --out OUT --seed SEED --no-progress [EXTRA...]
    python -m flowplug sample OUT/checkpoints/step-*.pt --num 64 --out OUT/samples.png

Run (from the repository root):

    # torchvision's CIFAR-10 (downloaded beforehand into DIR)
    python examples/train_cifar10_cli.py --data cifar10 --data-root DIR
    # any .npz holding x: uint8 (N, 3, H, W), e.g. the first CIFAR-10 training batch
    python examples/train_cifar10_cli.py --data ../shared/data/cifar10_batch1.npz
    # quick mode (tiny model, 40 steps, 2% held out): well under 2 minutes on 2 CPU cores
    python examples/train_cifar10_cli.py --data ../shared/data/cifar10_batch1.npz --quick

The full config (20000 steps of 64 images, evaluation and samples every 2000 steps) is sized for a GPU:
on one thread of a shared 2-core CPU it trained at about 1.3 steps/s, i.e. hours. Options this script
does not know are passed on to ``flowplug train`` and override the config, e.g. ``--steps 500 --device
cuda`` or ``--minutes 30``. Outputs go to ``--out`` (default ``runs/examples/cifar10_cli``): the run
folder of ``flowplug train`` plus ``samples.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowplug.cli import main as flowplug_main

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True,
                        help="'cifar10' (torchvision, with --data-root) or a path to an .npz / image folder")
    parser.add_argument("--data-root", help="torchvision's data folder for --data cifar10")
    parser.add_argument("--config", help="config file (default: configs/mrcnf_cifar10[_quick].json)")
    parser.add_argument("--holdout", type=float, help="held-out fraction (default 0.1, quick 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model and 40 steps (< 2 min on 2 CPUs)")
    parser.add_argument("--out", default="runs/examples/cifar10_cli", help="run folder")
    args, extra = parser.parse_known_args(argv)

    config = args.config or CONFIGS / ("mrcnf_cifar10_quick.json" if args.quick else "mrcnf_cifar10.json")
    holdout = args.holdout or (0.02 if args.quick else 0.1)
    out = Path(args.out)
    train = ["train", "--config", str(config), "--data", args.data, "--holdout", str(holdout),
             "--seed", str(args.seed), "--out", str(out), "--no-progress", *extra]
    if args.data_root is not None:
        train += ["--data-root", args.data_root]
    print("flowplug " + " ".join(train), flush=True)
    status = flowplug_main(train)
    if status != 0:
        return status

    checkpoints = sorted((out / "checkpoints").glob("step-*.pt"))
    if not checkpoints:
        print(f"no checkpoint was written in {out / 'checkpoints'}", file=sys.stderr)
        return 1
    sample = ["sample", str(checkpoints[-1]), "--num", "64", "--seed", str(args.seed),
              "--out", str(out / "samples.png")]
    print("flowplug " + " ".join(sample), flush=True)
    return flowplug_main(sample)


if __name__ == "__main__":
    sys.exit(main())
