"""Train MRCNF on CIFAR-10 through the ``flowplug`` command line, then sample from it.

By default this trains the ``mrcnf`` recipe (``flowplug recipes``: the model and plan of the results page,
fitted to the data) for ``--minutes`` CPU-minutes; ``--quick`` trains the tiny model of
``examples/configs/mrcnf_cifar10_quick.json`` (``{"model": <registry spec>, "train": <trainer options>}``) for 40
steps instead. The held-out bits per dimension at the end comes from exact-likelihood ODE solves. This script
runs the same commands as

    python -m flowplug train --data DATA --minutes 10 --clock process --out OUT --seed SEED --no-progress [EXTRA...]
    python -m flowplug sample OUT --num 64 --out OUT/samples.png

Run (from the repository root):

    # torchvision's CIFAR-10 (downloaded beforehand into DIR)
    python examples/train_cifar10_cli.py --data cifar10 --data-root DIR
    # any .npz holding x: uint8 (N, 3, H, W)
    python examples/train_cifar10_cli.py --data my_cifar_images.npz
    # quick mode (tiny model, 40 steps, 2% held out) on photo crops scikit-image ships (needs the images extra)
    python examples/train_cifar10_cli.py --data crops32 --quick

Options this script does not know are passed on to ``flowplug train`` and override the recipe or config, e.g.
``--device cuda`` or ``--minutes 30``. Outputs go to ``--out`` (default ``runs/examples/cifar10_cli``): the run
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
    parser.add_argument("--config", help="config file instead of the mrcnf recipe (quick: "
                                         "configs/mrcnf_cifar10_quick.json)")
    parser.add_argument("--minutes", type=float, default=10.0, help="CPU-minutes of training for the recipe")
    parser.add_argument("--holdout", type=float, help="held-out fraction (default 0.1, quick 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model and 40 steps (under a minute on 2 CPUs)")
    parser.add_argument("--out", default="runs/examples/cifar10_cli", help="run folder")
    args, extra = parser.parse_known_args(argv)

    config = args.config or (CONFIGS / "mrcnf_cifar10_quick.json" if args.quick else None)
    model = ["--config", str(config)] if config else ["--minutes", str(args.minutes), "--clock", "process"]
    holdout = args.holdout or (0.02 if args.quick else 0.1)
    out = Path(args.out)
    if args.data.startswith("crops"):
        holdout_flag = []  # the crops have their own held-out images
    else:
        holdout_flag = ["--holdout", str(holdout)]
    train = ["train", *model, "--data", args.data, *holdout_flag, "--seed", str(args.seed), "--out", str(out),
             "--no-progress", *extra]
    if args.data_root is not None:
        train += ["--data-root", args.data_root]
    print("flowplug " + " ".join(train), flush=True)
    status = flowplug_main(train)
    if status != 0:
        return status

    sample = ["sample", str(out), "--num", "64", "--seed", str(args.seed), "--out", str(out / "samples.png")]
    print("flowplug " + " ".join(sample), flush=True)
    return flowplug_main(sample)


if __name__ == "__main__":
    sys.exit(main())
