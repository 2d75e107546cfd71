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
image's one-probe noise, the MNIST model's 2,000 images take one probe to halve their CPU time).

**Data.** ``--mnist`` and ``--fashion`` take the two sets: an ``.npz`` holding ``x`` (uint8, N×1×H×W), an image
folder, or a ``load_dataset`` name (``mnist`` with ``--data-root DIR``). Without them the script runs from a
fresh clone on data it has or makes: the embedded 8×8 digits (17 grey levels) against smooth random blobs of the
same size and levels, which it writes to ``OUT/data/blobs.npz``. Needs the ``ood`` extra (AUROC and histograms:
``pip install -e ".[ood]"``). Run from the repository root:

    python examples/ood_mnist_fashion.py --quick   # digits against blobs, tiny model, 20 steps, 50 images a set
    python examples/ood_mnist_fashion.py           # digits against blobs, the full recipe (8 + 5 CPU minutes)
    python examples/ood_mnist_fashion.py --mnist mnist_test.npz --fashion fashion_mnist_test2k.npz --threads 1

The last is the run of docs/ood.md (MNIST's test set and the first 2,000 Fashion-MNIST test images as .npz files):
it trains 8 + 5 CPU minutes and scores 3,000 images (about 0.2 CPU-s per image and probe). ``--score-only``
scores the checkpoints an earlier run left in ``--out``. Other options (e.g. ``--threads 1``, ``--device cuda``,
``--data-root DIR``) go to every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flowplug  # noqa: F401  (before torch: lets torch's idle OpenMP threads sleep, flowplug.threads)

# isort: split
import numpy as np
import torch

from flowplug.cli import main as flowplug_main

CONFIGS = Path(__file__).resolve().parent / "configs"


def make_blobs(path: Path, n: int = 1797, size: int = 8, n_bins: int = 17, seed: int = 0) -> Path:
    """``n`` smooth random grey images (3×3 noise upsampled bilinearly) quantised to ``n_bins`` levels, as an
    ``.npz`` the command line reads: the clone's out-of-distribution set for models of the embedded digits."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 3, 3, generator=generator)
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (smooth * (n_bins - 1)).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, n_bins=np.array(n_bins))
    return path


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
    parser.add_argument("--mnist", help="the first set: MNIST images (.npz, image folder or 'mnist'); "
                                           "default: the embedded digits")
    parser.add_argument("--fashion", help="the second set: Fashion-MNIST images (.npz or image folder); "
                                          "default: smooth random blobs written to OUT/data/blobs.npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", type=int, help="Hutchinson probes averaged per image (default: 1 for the "
                                                  "MNIST model, 2 for the Fashion-MNIST model)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 20 steps, 50 images a set")
    parser.add_argument("--score-only", action="store_true", help="score the checkpoints already in --out")
    parser.add_argument("--out", default="runs/examples/ood_mnist_fashion")
    args, extra = parser.parse_known_args(argv)

    if bool(args.mnist) != bool(args.fashion):
        parser.error("give both --mnist and --fashion (images of one size), or neither (digits against blobs)")
    out = Path(args.out)
    config = CONFIGS / ("mrcnf_ood_quick.json" if args.quick else "mrcnf_ood_flat.json")
    first, first_data = ("mnist", args.mnist) if args.mnist else ("digits", "digits")
    second, second_data = ("fashion", args.fashion) if args.fashion else ("blobs", str(out / "data" / "blobs.npz"))
    if not args.fashion:
        make_blobs(Path(second_data), seed=args.seed)
    # (trained on, held-out fraction, budget flags, other set, images scored per set, probes)
    plan = [(first, first_data, 0.1, [], second, second_data, 1000, 1),
            (second, second_data, 0.25, ["--minutes", "5"], first, first_data, 500, 2)]
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
