"""Training cost per resolution: CPU time per step and peak memory of MRCNF against the single-resolution CNF.

For 32×32 (3 levels), 64×64 (4 levels) and 128×128 (5 levels) on the offline crops (``crops<SIZE>``,
:mod:`flowplug.crops`): the ``mrcnf`` recipe (``flowplug recipes``) with 3, 4 and 5 levels, and the
``single-resolution-cnf`` recipe (one residual net on the full image), both fitted to the crops, and at 64×64 the
``mrcnf`` recipe as ``flowplug train --data crops64`` fits it (3 levels, by the recipe's levels rule).
Both train by flow matching, which needs no ODE solve, so the cost of a step is one pass of every level's net
and the comparison is between the nets' sizes only (likelihood training's cost also depends on each trained
model's NFE; see ``compare.py``'s figures for evaluation NFE of trained models).

Each configuration runs in a fresh process (``spawn``) with ``--threads`` torch threads, sequentially:

- **CPU s / step**: process CPU time of ``--steps`` flow-matching steps (loss, backward, AdamW) at batch
  ``--batch``, after one untimed step, divided by ``--steps``. CPU time, not wall time, so that other load on
  the machine does not count (it still slows a step somewhat through shared caches).
- **peak RSS, training**: the process's peak resident memory after training (``ru_maxrss``: Python, torch,
  the batch data and the training step); **RSS at start** is the resident memory before the model is built,
  so the difference is what the model and its training step add.
- **peak RSS, evaluation**: after one exact-likelihood ``log_prob`` of ``--eval-batch`` images with the
  evaluation solver, if that raised the peak; **NFE / CPU s per image** of that pass are those of barely
  trained nets, not a trained model's cost. ``--eval-batch 0`` leaves the evaluation out (at 64×64 and above
  the single-resolution CNF's takes CPU-minutes).

    PYTHONPATH=. python benchmarks/resolution.py                 # the table (a few CPU-minutes)
    PYTHONPATH=. python benchmarks/resolution.py --sizes 32 64 --steps 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare.py lies beside this script
from compare import peak_rss_mib

_LEVELS = {32: 3, 64: 4, 128: 5}


def _rss_mib() -> float:
    """The current resident memory of this process (Linux ``/proc``; ``nan`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def configurations(sizes: list[int]) -> list[dict[str, Any]]:
    """The measured models: ``{"name", "size", "recipe", "model"}`` per size (``model``: spec keys over the
    recipe's), plus the ``mrcnf`` recipe as fitted by its own rule at 64×64."""
    jobs = []
    for size in sizes:
        levels = _LEVELS.get(size)
        if levels is None:
            raise ValueError(f"sizes are {sorted(_LEVELS)}, got {size}")
        jobs.append({"name": f"MRCNF ({levels} levels, recipe)", "size": size, "recipe": "mrcnf",
                     "model": {"levels": levels}})
        if size == 64:
            jobs.append({"name": "MRCNF (recipe as fitted: 3 levels)", "size": size, "recipe": "mrcnf", "model": {}})
        jobs.append({"name": "single-resolution CNF", "size": size, "recipe": "single-resolution-cnf", "model": {}})
    return jobs


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration's figures (run in its own process)."""
    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    import flowplug
    from flowplug.crops import sample_crops
    from flowplug.data import Batch, dequantize
    from flowplug.recipes import plan
    from flowplug.train import get_objective
    from flowplug.train.evaluation import count_nfe

    size, batch = job["size"], job["batch"]
    images = sample_crops(size, num=batch * (job["steps"] + 1), seed=0)
    v = dequantize(images.x, 256, generator=torch.Generator().manual_seed(0)).split(batch)
    start_rss = _rss_mib()
    model = flowplug.build(plan(job["recipe"], images, model=job["model"]).model)
    model.initialize_from_data(v[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = get_objective("flow_matching")

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, Batch(x, 256))
        loss.backward()
        optimizer.step()

    model.train()
    step(v[0])
    t0 = time.process_time()
    for x in v[1:]:
        step(x)
    cpu_per_step = (time.process_time() - t0) / job["steps"]
    train_peak = peak_rss_mib()

    evaluation: dict[str, Any] = {"peak_rss_eval_mib": None, "eval_nfe": None, "eval_cpu_s_per_image": None}
    if job["eval_batch"]:
        model.eval()
        t0 = time.process_time()
        with torch.no_grad():
            model.log_prob(v[0][: job["eval_batch"]])
        evaluation = {"peak_rss_eval_mib": peak_rss_mib(), "eval_nfe": count_nfe(model),
                      "eval_cpu_s_per_image": (time.process_time() - t0) / job["eval_batch"]}
    return {
        "name": job["name"], "size": size, "levels": model.num_levels,
        "parameters": sum(p.numel() for p in model.parameters()), "batch": batch, "steps": job["steps"],
        "threads": job["threads"], "cpu_s_per_step": cpu_per_step, "rss_start_mib": start_rss,
        "peak_rss_train_mib": train_peak, "eval_batch": job["eval_batch"], **evaluation,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as a Markdown table, with each MRCNF's time per step as a fraction of the single-resolution
    CNF's at its size."""
    single = {r["size"]: r["cpu_s_per_step"] for r in rows if r["levels"] == 1}
    lines = ["| size | model | params | CPU s / step | × single-res. | RSS at start (MiB) | peak RSS train (MiB) "
             "| peak RSS eval (MiB) | eval NFE (barely trained) | eval CPU s / image (barely trained) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["cpu_s_per_step"] / single[r["size"]] if r["size"] in single else float("nan")
        evaluation = ("— | — | —" if r["eval_nfe"] is None else
                      f"{r['peak_rss_eval_mib']:.0f} | {r['eval_nfe']} | {r['eval_cpu_s_per_image']:.3f}")
        lines.append(f"| {r['size']}×{r['size']} | {r['name']} | {r['parameters']:,} | {r['cpu_s_per_step']:.3f} | "
                     f"{ratio:.2f} | {r['rss_start_mib']:.0f} | {r['peak_rss_train_mib']:.0f} | {evaluation} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(_LEVELS), choices=sorted(_LEVELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument("--eval-batch", type=int, default=32, help="images of the evaluation pass (0: none)")
    parser.add_argument("--models", nargs="+", help="only the models with these names (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.eval_batch < 0:
        parser.error("--eval-batch must not be negative")
    jobs = [job for job in configurations(args.sizes) if args.models is None or job["name"] in args.models]
    if not jobs:
        parser.error("--models names none of the measured models")
    context = multiprocessing.get_context("spawn")
    rows = []
    for job in jobs:
        job.update(batch=args.batch, steps=args.steps, eval_batch=args.eval_batch, threads=args.threads)
        with context.Pool(1) as pool:
            rows.append(pool.apply(measure, (job,)))
        print(f"{job['size']}: {job['name']}: {rows[-1]['cpu_s_per_step']:.3f} CPU s / step", flush=True)
        if args.json is not None:  # after every model, so an interrupted run keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
