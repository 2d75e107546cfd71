"""Progressive growth to 128×128 through the command line: train MRCNF at 32×32, grow to 64×64, then to 128×128.

Every stage is one ``flowplug`` command on a CPU-time budget (``--clock process``), run as a child process so
its CPU seconds and peak memory are measured; after each stage its final checkpoint is scored on held-out
images, and the last stage's samples are kept. The commands, for the default sizes:

    python -m flowplug train --recipe mrcnf --data D/32-train.npz --minutes M1 --batch-size B1 --out OUT/stage-32 ...
    python -m flowplug train --grow-from OUT/stage-32 --data D/64-train.npz --minutes M2 --batch-size B2 \\
        --out OUT/stage-64 ...
    python -m flowplug train --grow-from OUT/stage-64 --data D/128-train.npz ... --out OUT/stage-128 ...
    python -m flowplug evaluate OUT/stage-S/checkpoints/step-*.pt --data D/S-held-out[-N].npz --split all

(``...``: ``--holdout H --clock process --threads T --eval-every 1000000 --num-samples 16 --seed 0
--no-progress``; the grown stages keep their old levels frozen, as the paper does, unless ``--fine-tune``). The
128×128 stage is scored on the first 32 held-out crops only (``--held-out-images``): its exact likelihood costs
several CPU-seconds per image.

**Data: one set of images at every size.** The images are the training and held-out crops of
``load_dataset("crops128")`` (scikit-image's photographs, held-out crops from disjoint image regions); the
smaller sizes are their 2×2 block means (the Haar transform's coarse image, ``docs/design.md`` §1) rounded to
integers, not the independent ``crops32``/``crops64`` sets, whose crops frame a smaller part of a photograph
(a crop's side scales with its size). So after each growth the old levels see the coarse images of the same
photographs at the same framing as before; they differ from what the parent was trained on only within one
quantisation step (the coarse image of dequantised data is the mean of four dequantised pixels, the parent's
data were the rounded mean plus one uniform draw).

Needs scikit-image for the photographs (``pip install -e ".[images]"``). Run (from the repository root; about
20 CPU-minutes in all with the defaults):

    python examples/progressive_128.py --out runs/progressive-128
    python examples/progressive_128.py --quick --out /tmp/progressive   # 8×8 → 16×16, seconds

Outputs in ``--out``: ``data/`` (the ``.npz`` pyramids), one run folder per stage, ``summary.json`` (per stage:
held-out bits/dim overall and per level, steps, training CPU seconds, the command's CPU seconds and peak
memory) and ``samples-<size>.png`` of the final model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flowplug  # noqa: F401  (before torch: lets torch's idle OpenMP threads sleep, flowplug.threads)

# isort: split
import numpy as np
import torch

from flowplug.data import ImageData, load_dataset

ROOT = Path(__file__).resolve().parent.parent

FIXED = ["--clock", "process", "--eval-every", "1000000", "--num-samples", "16", "--seed", "0", "--no-progress"]
"""Flags of every stage: CPU-time budget, one evaluation (of the run's own ``--holdout`` split of the training
images; the reported figures come from the held-out crops) at the end, 16 samples."""


def block_mean(x: torch.Tensor) -> torch.Tensor:
    """Integer images ``(N, C, H, W)`` → their 2×2 block means rounded to the nearest integer (halves up)."""
    n, c, h, w = x.shape
    mean = x.double().reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))
    return torch.floor(mean + 0.5).to(torch.uint8)


def write_pyramid(train: ImageData, held_out: ImageData, sizes: list[int], folder: Path) -> dict[int, dict[str, Path]]:
    """Write ``<size>-train.npz`` and ``<size>-held-out.npz`` for every size (the largest: the data given);
    ``{size: {"train": path, "held-out": path}}``."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": train.x, "held-out": held_out.x}
    paths: dict[int, dict[str, Path]] = {}
    for size in sorted(sizes, reverse=True):
        for part, x in parts.items():
            while x.shape[-1] > size:
                x = block_mean(x)
            parts[part] = x
            paths.setdefault(size, {})[part] = folder / f"{size}-{part}.npz"
            np.savez(paths[size][part], x=x.numpy(), n_bins=np.array(train.n_bins))
    return paths


def run(command: list[str], log: Path) -> tuple[dict[str, float], str]:
    """Run ``python -m flowplug COMMAND`` (its messages in ``log``); its CPU seconds, wall seconds and peak
    memory, and its standard output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print("flowplug " + " ".join(command), flush=True)
    start = time.monotonic()
    with log.open("w") as messages, tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen([sys.executable, "-m", "flowplug", *command], stdout=output, stderr=messages,
                                 env=env)
        _, status, usage = os.wait4(child.pid, 0)
        output.seek(0)
        text = output.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the command failed; see {log}:\n{log.read_text()[-2000:]}")
    cost = {"cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "wall_s": round(time.monotonic() - start, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    return cost, text


def train_stage(size: int, model: list[str], data: Path, minutes: str, batch: int, holdout: float, threads: int,
                out: Path, quick: bool = False) -> dict:
    """Train one stage (``model``: ``--recipe ...``, ``--config ...`` or ``--grow-from ...``); its report's
    figures and the command's cost."""
    folder = out / f"stage-{size}"
    budget = ["--steps", "3"] if quick else ["--minutes", minutes]
    cost, _ = run(["train", *model, "--data", str(data), *budget, "--batch-size", str(batch), "--holdout",
                   f"{holdout:g}", "--threads", str(threads), "--out", str(folder), "--overwrite", *FIXED],
                  out / f"stage-{size}.log")
    report = json.loads((folder / "report.json").read_text())
    return {"size": size, "batch_size": batch, "steps": report["steps"], "parameters": report["parameters"],
            "train_cpu_s": report["budget_time_s"], "train_wall_s": report["train_time_s"],
            "run_held_out": report["held_out"], "train_command": cost}


def evaluate_stage(size: int, held_out: Path, threads: int, out: Path) -> dict:
    """Score the stage's final checkpoint on the held-out images ``held_out``: the result and the command's cost."""
    checkpoint = sorted((out / f"stage-{size}" / "checkpoints").glob("step-*.pt"))[-1]
    cost, printed = run(["evaluate", str(checkpoint), "--data", str(held_out), "--split", "all", "--device", "cpu",
                         "--threads", str(threads)], out / f"stage-{size}-evaluate.log")
    return {"held_out": json.loads(printed), "evaluate_command": cost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/progressive-128", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128],
                        help="image size of each stage, doubling (default 32 64 128)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[3.0, 3.0, 5.0],
                        help="CPU-minutes of training per stage (default 3 3 5)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 64, 32],
                        help="images per step per stage (default 128 64 32)")
    parser.add_argument("--holdouts", type=float, nargs="+", default=[0.02, 0.02, 0.005],
                        help="fraction of the training images each run scores at its end (default 0.02 0.02 0.005)")
    parser.add_argument("--held-out-images", type=int, nargs="+", default=[200, 200, 32],
                        help="held-out crops each stage is scored on (of 200; default 200 200 32: exact "
                             "likelihood at 128×128 costs about 10 CPU-s per image)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each command (default 1)")
    parser.add_argument("--fine-tune", action="store_true", help="train the old levels too (default: frozen)")
    parser.add_argument("--quick", action="store_true",
                        help="8×8 → 16×16 crops, 3 steps each, tiny nets (a smoke test)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.quick:
        args.sizes, args.batch_sizes, args.holdouts, args.held_out_images = [8, 16], [16, 16], [0.02] * 2, [200] * 2
    sizes = args.sizes
    per_stage = (args.batch_sizes, args.holdouts, args.held_out_images, *(() if args.quick else (args.minutes,)))
    if any(len(values) != len(sizes) for values in per_stage):
        raise SystemExit("give one --minutes, --batch-sizes, --holdouts and --held-out-images value per size")
    if any(b != 2 * a for a, b in itertools.pairwise(sizes)):
        raise SystemExit(f"each size must double the one before, got {sizes}")

    try:  # the crops are scikit-image's bundled photographs
        import skimage  # noqa: F401
    except ImportError:
        raise SystemExit('progressive_128.py: error: the photo crops need scikit-image: pip install -e ".[images]"'
                         ) from None
    largest = f"crops{sizes[-1]}"
    data = write_pyramid(load_dataset(largest), load_dataset(largest, train=False), sizes, out / "data")
    summary: dict = {"data": f"{largest} (training and held-out crops) and its 2x2 block means",
                     "threads": args.threads, "old_levels": "fine-tune" if args.fine_tune else "frozen",
                     "stages": []}
    for i, size in enumerate(sizes):
        if i == 0:
            model = ["--config", str(_quick_config(out))] if args.quick else ["--recipe", "mrcnf"]
        else:
            model = ["--grow-from", str(out / f"stage-{sizes[i - 1]}"),
                     "--old-levels", "fine-tune" if args.fine_tune else "frozen"]
        minutes = "" if args.quick else f"{args.minutes[i]:g}"
        stage = train_stage(size, model, data[size]["train"], minutes, args.batch_sizes[i], args.holdouts[i],
                            args.threads, out, args.quick)
        stage.update(evaluate_stage(size, held_out_file(data[size]["held-out"], args.held_out_images[i]),
                                    args.threads, out))
        summary["stages"].append(stage)
        held_out = stage["held_out"]
        print(f"{size}x{size}: held-out {held_out['bpd']:.4f} bits/dim ({held_out['num_images']} images), per level "
              f"{', '.join(f'{b:.4f}' for b in held_out['per_level_bpd'])}; {stage['steps']} steps, "
              f"{stage['train_cpu_s']:.0f} training CPU-s, command {stage['train_command']['cpu_s']:.0f} CPU-s, "
              f"peak {stage['train_command']['peak_rss_mib']:.0f} MiB", flush=True)
    samples = sorted((out / f"stage-{sizes[-1]}" / "samples").glob("*.png"))[-1]
    shutil.copyfile(samples, out / f"samples-{sizes[-1]}.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'summary.json'} and {out / f'samples-{sizes[-1]}.png'}")
    return 0


def held_out_file(path: Path, count: int) -> Path:
    """``path`` itself, or a copy of its first ``count`` images beside it."""
    with np.load(path) as archive:
        x, n_bins = archive["x"], archive["n_bins"]
    if count >= len(x):
        return path
    subset = path.with_name(f"{path.stem}-{count}.npz")
    np.savez(subset, x=x[:count], n_bins=n_bins)
    return subset


def _quick_config(out: Path) -> Path:
    """A tiny 3-level MRCNF for the smoke test (fixed-step solver)."""
    solver = {"method": "rk4", "step_size": 0.5}
    config = {"model": {"type": "mrcnf", "levels": 3, "net": "res_odenet", "net_options": {"hidden_channels": 8},
                        "train_solver": solver, "eval_solver": solver},
              "train": {"objective": "flow_matching", "lr": 2e-3}}
    path = out / "quick.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


if __name__ == "__main__":
    sys.exit(main())
