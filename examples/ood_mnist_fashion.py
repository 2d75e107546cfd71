"""Out-of-distribution detection by resolution level: MNIST against Fashion-MNIST and back, through the CLI.

Trains the 2-level MRCNF of ``configs/mrcnf_ood_flat.json`` (the flat-backgrounds recipe: residual level nets,
logit α = 1e-3, detail asinh stretch 1/256; flow matching, a budget in CPU minutes) on each data set, then scores
its held-out images against the other set with ``flowplug ood``: per-image bits per dimension overall and per
level, the AUROC of each score, histograms. The commands it runs:

    flowplug train --config configs/mrcnf_ood_flat.json --data MNIST --holdout 0.1 --out OUT/mnist
    flowplug train --config configs/mrcnf_ood_flat.json --data FASHION --holdout 0.25 --minutes 5 --out OUT/fashion
    flowplug ood OUT/mnist/checkpoints/step-N.pt --data MNIST --data FASHION --per-level --probes 1 \\
        --max-images 1000 --out OUT/mnist-vs-fashion
    flowplug ood OUT/fashion/checkpoints/step-N.pt --data FASHION --data MNIST --per-level --probes 2 \\
        --max-images 500 --out OUT/fashion-vs-mnist

(the first ``--data`` of ``ood`` is scored on the checkpoint's own held-out images, the second in full up to
``--max-images``; the Fashion-MNIST model's scores average two Hutchinson probes, which also measures each
image's one-probe noise, the MNIST model's 2,000 images take one probe to halve their CPU time). Run from the
repository root:

    python examples/ood_mnist_fashion.py        # ../shared/data/mnist_test.npz, fashion_mnist_test2k.npz
    python examples/ood_mnist_fashion.py --mnist A.npz --fashion B.npz --out runs/ood --threads 1
    python examples/ood_mnist_fashion.py --quick   # tiny model, 20 steps, 50 images a set: about a minute

The full run trains 8 + 5 CPU minutes and scores 3,000 images (about 0.2 CPU-s per image and probe); docs/ood.md
shows its results. ``--score-only`` scores the checkpoints an earlier run left in ``--out``. Other options (e.g.
``--threads 1``, ``--device cuda``) go to every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowplug.cli import main as flowplug_main

CONFIGS = Path(__file__).resolve().parent / "configs"
SHARED = Path("../shared/data")


def run(command: list[str]) -> None:
    print("flowplug " + " ".join(command), flush=True)
    status = flowplug_main(command)
    if status != 0:
        sys.exit(status)


def latest_checkpoint(run_folder: Path) -> Path:
    checkpoints = sorted((run_folder / "checkpoints").glob("step-*.pt"))
    if not checkpoints:
        sys.exit(f"no checkpoint in {run_folder / 'checkpoints'}; train first (leave out --score-only)")
    return checkpoints[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=str(SHARED / "mnist_test.npz"), help="MNIST images (.npz or 'mnist')")
    parser.add_argument("--fashion", default=str(SHARED / "fashion_mnist_test2k.npz"),
                        help="Fashion-MNIST images (.npz or image folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", type=int, help="Hutchinson probes averaged per image (default: 1 for the "
                                                  "MNIST model, 2 for the Fashion-MNIST model)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 20 steps, 50 images a set")
    parser.add_argument("--score-only", action="store_true", help="score the checkpoints already in --out")
    parser.add_argument("--out", default="runs/examples/ood_mnist_fashion")
    args, extra = parser.parse_known_args(argv)

    out = Path(args.out)
    config = CONFIGS / ("mrcnf_ood_quick.json" if args.quick else "mrcnf_ood_flat.json")
    # (trained on, held-out fraction, budget flags, other set, images scored per set, probes)
    plan = [("mnist", args.mnist, 0.1, [], "fashion", args.fashion, 1000, 1),
            ("fashion", args.fashion, 0.25, ["--minutes", "5"], "mnist", args.mnist, 500, 2)]
    for name, data, holdout, budget, other, other_data, images, probes in plan:
        if not args.score_only:
            run(["train", "--config", str(config), "--data", data, "--holdout", str(holdout), "--seed",
                 str(args.seed), "--out", str(out / name), "--no-progress", "--overwrite",
                 *([] if args.quick else budget), *extra])
        run(["ood", str(latest_checkpoint(out / name)), "--data", data, "--data", other_data, "--per-level",
             "--probes", str(args.probes or probes), "--max-images", str(50 if args.quick else images),
             "--out", str(out / f"{name}-vs-{other}"), *extra])
    return 0


if __name__ == "__main__":
    sys.exit(main())
