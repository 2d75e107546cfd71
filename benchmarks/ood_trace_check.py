"""How trustworthy per-image OOD scores are: Hutchinson probes against the exact trace on a few images.

Scores the first ``--images`` held-out images of a checkpoint's own data set (or ``--data``) with the exact CNF
trace and with ``--probes`` Hutchinson probes (one batch each, the checkpoint's evaluation solver), and prints,
per image and score, the exact value, the probes' mean, its standard error and the one-probe standard
deviation, with the CPU seconds of each. Run from the repository root, e.g.

    PYTHONPATH=. python benchmarks/ood_trace_check.py runs/mnist/checkpoints/step-N.pt \\
        --data ../shared/data/mnist_test.npz --images 2 --probes 32 --threads 1

The exact trace costs ``D`` vector-Jacobian products per function evaluation (D = 588 and 196 for the two
levels of a 28×28 image): minutes per image on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import flowplug  # noqa: F401  (before torch: flowplug chooses the OpenMP wait policy)

# isort: split

import torch

from flowplug.ood import score_images
from flowplug.train import Trainer, load_checkpoint
from flowplug.train.splits import evaluation_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the checkpoint's data set (its held-out split is used)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkpoint = load_checkpoint(args.checkpoint)
    trainer = Trainer.restore(checkpoint)
    data = evaluation_split(checkpoint, args.data).first(args.images)
    model, seed = trainer.eval_model(), trainer.config.seed

    results = {}
    for trace, probes in (("hutchinson", args.probes), ("exact", 1)):
        start = time.process_time()
        results[trace] = score_images(model, data, per_level=True, trace=trace, probes=probes, seed=seed,
                                      batch_size=args.images)
        print(f"{trace} ({probes} probe(s)): {time.process_time() - start:.1f} CPU-s for {args.images} images",
              flush=True)
    rows = []
    for name, exact in results["exact"].scores.items():
        for i, value in enumerate(exact):
            sd = float(results["hutchinson"].probe_sd[name][i])
            mean = float(results["hutchinson"].scores[name][i])
            rows.append({"image": i, "score": name, "exact": float(value), "probe_mean": mean,
                         "standard_error": sd / math.sqrt(args.probes), "one_probe_sd": sd,
                         "difference_in_standard_errors": (mean - float(value)) / (sd / math.sqrt(args.probes))})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
