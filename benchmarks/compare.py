"""Side-by-side comparison of flowplug's recipes (``flowplug recipes``): MRCNF against Glow, RealNVP and a
single-resolution CNF at the same training budget on the same images.

Every model is a recipe of the package (:func:`flowplug.recipes.plan`, the same model and training plan that
``flowplug train --recipe NAME`` trains), fitted to the data by the recipes' rules, trained through the shared
:class:`flowplug.Trainer` and scored by the one evaluation path (:func:`flowplug.train.evaluation.evaluate`:
one dequantisation per pixel, fixed by the seed, BPD averaged over the held-out images, per level for
multi-resolution models, CNFs with their evaluation solver). This script defines no model and no training
plan of its own; it only chooses the data split, the budget and what to measure.

Protocol (what the figures mean):

- **Split.** ``--split random`` (the default) holds out the images ``flowplug train --data`` holds out: a random
  10 % chosen by ``--seed`` (:func:`flowplug.train.splits.training_split`), so the harness and the command line
  score the same images; ``--split last`` holds out the last ``--holdout`` images (1,000 by default; the
  protocol of the tables measured up to 2026-12-06). Held-out images are never trained on; the final
  BPD is the mean over all of them, or over the first ``--eval-images``. A data set with its own held-out images
  (``crops<SIZE>``) trains on all its training images and scores its own held-out ones.
- **Budget and curve.** Each model trains for ``--minutes`` on the budget clock (``--clock process``: CPU
  seconds of its process); time in evaluations does not count (:mod:`flowplug.train.budget`). The first
  ``--curve-images`` held-out images are scored at ``--checkpoints`` evenly spaced points of the budget
  (``eval_points``); the plot shows that curve against training time.
- **Solver tolerance.** CNF models score the curve subset once more at ``atol = rtol = --loose-tol``; the two
  figures side by side show whether the reported BPD is converged in the tolerance.
- **Cost.** NFE is the sum over levels of the evaluation solver's function evaluations per batch (also per
  image: the images of a batch share the adaptive steps). Sampling time is the wall time of drawing
  ``--sample-images`` images at temperature 1, per image. Peak memory is the process's peak RSS on CPU
  (each model runs in its own process) or ``torch.cuda.max_memory_allocated`` on CUDA.
- **Fair share.** Each model runs in its own process with ``torch.set_num_threads(--threads)``;
  ``--parallel`` of them run at once.

Outputs in ``--out``: ``runs/<recipe>.json`` (one per model, written as each finishes), ``results.json`` (every
figure, setting, hardware and version), ``results.md`` (the table) and ``bpd_vs_time.png`` (needs matplotlib).

    python benchmarks/compare.py --data ../shared/data/cifar10_batch1.npz \\
        --recipes mrcnf glow realnvp single-resolution-cnf --minutes 10 --clock process --threads 1 \\
        --parallel 2 --out benchmarks/results/cifar10-cpu10
    python benchmarks/compare.py --report-only --out benchmarks/results/cifar10-cpu10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import flowplug  # noqa: F401  (before torch: flowplug chooses the OpenMP wait policy)

# isort: split

import torch

# smoke-test sizes for --quick (budget, evaluation sizes); the models stay the recipes'
_QUICK = {"minutes": 0.2, "eval_images": 16, "curve_images": 8, "checkpoints": 2,
          "sample_images": 2, "holdout": 100}


# ----------------------------------------------------------------------------------- settings
def slug(name: str) -> str:
    """File-name form of a model's display name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def build_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One job (plain data, sent to a worker process) per selected recipe."""
    from flowplug.recipes import load_recipe

    for name in args.recipes:
        load_recipe(name)  # an unknown name fails here, naming the recipes
    return [{
        "name": name, "data": args.data, "split": args.split, "holdout": args.holdout,
        "eval_images": args.eval_images,
        "curve_images": args.curve_images, "checkpoints": args.checkpoints, "minutes": args.minutes,
        "clock": args.clock, "threads": args.threads, "device": args.device, "sample_images": args.sample_images,
        "loose_tol": args.loose_tol, "seed": args.seed, "train": args.train, "model": args.model_options,
        "conditional": args.conditional, "out": str(args.out),
    } for name in args.recipes]


def hardware(threads: int, parallel: int, device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, threads, GPU and library versions of a run of ``parallel`` models at once on ``device``,
    ``threads`` torch threads each."""
    import normflows
    import torchdiffeq

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "threads_per_model": threads,
        "models_in_parallel": parallel, "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "normflows": normflows.__version__, "torchdiffeq": torchdiffeq.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ------------------------------------------------------------------------------------ worker
def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def split_data(job: dict[str, Any]) -> tuple[Any, Any]:
    """``(training images, held-out images)`` of the job's data set: the command line's random split, or the last
    ``holdout`` images, or the set's own held-out part."""
    from flowplug.data import ImageData, has_own_held_out, load_dataset
    from flowplug.train.splits import training_split

    data = load_dataset(job["data"])
    if has_own_held_out(job["data"]) or job["split"] == "random":
        return training_split(job["data"], data, seed=job["seed"])
    if not 0 < job["holdout"] < len(data):
        raise ValueError(f"--holdout {job['holdout']} must lie between 0 and the {len(data)} images of {job['data']}")
    labels = (None, None) if data.y is None else (data.y[: -job["holdout"]], data.y[-job["holdout"]:])
    return (ImageData(data.x[: -job["holdout"]], data.n_bins, f"{data.name}[train]", y=labels[0]),
            ImageData(data.x[-job["holdout"]:], data.n_bins, f"{data.name}[held-out]", y=labels[1]))


def run_model(job: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate and time one recipe (runs in its own process); writes runs/<slug>.json."""
    torch.set_num_threads(job["threads"])
    from flowplug.recipes import plan
    from flowplug.train import Trainer

    started = time.monotonic()
    train, held = split_data(job)
    if max(job["eval_images"] or 0, job["curve_images"]) > len(held):
        raise ValueError(f"--eval-images and --curve-images must not exceed the {len(held)} held-out images")
    evaluation = held if job["eval_images"] is None else held.first(job["eval_images"])
    curve_set = held.first(job["curve_images"])
    if job["conditional"]:
        train.labels()  # refuses unlabelled data, naming the sources that carry labels
    condition = {"num_classes": train.num_classes} if job["conditional"] else {}
    fitted = plan(job["name"], train, model={**condition, **(job["model"].get(job["name"]) or {})}, train={
        "minutes": job["minutes"], "clock": job["clock"], "seed": job["seed"], "eval_points": job["checkpoints"],
        "progress": False, "tensorboard": False, **job["train"]})
    model, config = fitted.build()
    trainer = Trainer(model, config, device=job["device"], recipe=fitted.record())
    report = trainer.fit(train, curve_set)
    t0 = time.monotonic()
    held_out = trainer.evaluate(evaluation)
    eval_time = time.monotonic() - t0
    tolerance = None
    if model.is_continuous:
        loose = trainer.evaluate(curve_set, tolerance=job["loose_tol"])
        tolerance = {"images": len(curve_set), "loose_tol": job["loose_tol"], "bpd_loose": loose["bpd"],
                     "bpd_eval": report["held_out"]["bpd"], "nfe_loose": loose.get("nfe")}
    t0 = time.monotonic()
    trainer.sample(job["sample_images"])
    sample_time = (time.monotonic() - t0) / job["sample_images"]
    result = {
        "name": job["name"], "conditional": job["conditional"], "recipe": fitted.record(), "spec": model.config,
        "trainer": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": trainer.step, "phase_starts": trainer.phase_starts, "skipped_steps": trainer.skipped_steps,
        "train_time_s": report["budget_time_s"], "clock": job["clock"], "wall_train_time_s": report["train_time_s"],
        "time_per_step_s": report["budget_time_s"] / trainer.step if trainer.step else None,
        "held_out": held_out, "held_out_eval_time_s": round(eval_time, 2),
        "levels": len(held_out["per_level_bpd"]),
        "nfe_eval": held_out.get("nfe"), "solver_tolerance_check": tolerance,
        "curve": report["curve"], "sample_time_per_image_s": sample_time,
        "peak_memory_mib": _peak_memory_mib(trainer.device),
        "memory_kind": ("cuda max_memory_allocated" if trainer.device.type == "cuda"
                        else "peak RSS of the process"),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    runs = Path(job["out"]) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{slug(job['name'])}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_safely(job: dict[str, Any]) -> dict[str, Any]:
    """``run_model``, turning a failure into a recorded error so the other models still finish."""
    try:
        return run_model(job)
    except Exception as error:  # recorded in the results, so one failure does not stop the rest
        return {"name": job["name"], "error": f"{type(error).__name__}: {error}"}


# ----------------------------------------------------------------------------------- outputs
def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (one row per model)."""
    header = ("| model | lr | batch | parameters | steps | s / step | held-out BPD | BPD per level "
              "(finest detail → coarsest) | NFE / image (eval) | BPD at loose / eval tol "
              "(curve subset) | sampling s / image | peak memory (MiB) |")
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for r in results:
        if "error" in r:  # the name and the error fill two columns, the rest stay empty
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * (columns - 2))
            continue
        per_level = (" / ".join(f"{b:.3f}" for b in r["held_out"]["per_level_bpd"])
                     if r["levels"] > 1 else "—")
        tol = r["solver_tolerance_check"]
        tol_text = "—" if tol is None else f"{tol['bpd_loose']:.4f} / {tol['bpd_eval']:.4f}"
        name = f"{r['name']}, conditional" if r.get("conditional") else r["name"]
        lines.append(
            f"| {name} | {_rates(r['trainer'])} | {r['trainer']['batch_size']} | {r['parameters']:,} | "
            f"{r['steps']:,} | "
            f"{_fmt(r['time_per_step_s'], 3)} | {r['held_out']['bpd']:.3f} | {per_level} | "
            f"{_fmt(r['nfe_eval'], 0)} | {tol_text} | {r['sample_time_per_image_s']:.3f} | "
            f"{r['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _rates(trainer: dict[str, Any]) -> str:
    """The table's learning-rate cell: the rate, and each later phase's objective and rate."""
    cells = [f"{trainer['lr']:g}"]
    for phase, before in zip(trainer["phases"][1:], trainer["phases"], strict=False):
        rate = f" at {phase['lr']:g}" if phase["lr"] is not None else ""
        cells.append(f"from {before['until']} {phase['objective']['type']}{rate}")
    return ", ".join(cells)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Held-out (curve subset) BPD against training time; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in results:
        if "error" in r:
            continue
        minutes = [c["train_time_s"] / 60 for c in r["curve"]]
        ax.plot(minutes, [c["bpd"] for c in r["curve"]], marker="o", label=r["name"])
    ax.set_xlabel("training time (minutes on the budget clock: wall or CPU, see title)")
    ax.set_ylabel("held-out BPD (curve subset)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_outputs(out: Path, meta: dict[str, Any] | None) -> None:
    """Gather runs/*.json into results.json, results.md and bpd_vs_time.png."""
    results_path = out / "results.json"
    if meta is None:  # --report-only: keep the settings recorded by the run
        meta = {k: v for k, v in json.loads(results_path.read_text()).items() if k != "results"}
    order = meta.get("models", [])
    by_name = {}
    for path in sorted((out / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        by_name[r["name"]] = r
    for failure in meta.get("failures", []):
        by_name.setdefault(failure["name"], failure)
    results = [by_name[n] for n in order if n in by_name]
    results += [r for n, r in by_name.items() if n not in order]
    results_path.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    print(table)
    s = meta["settings"]
    clock = "CPU-" if s.get("clock") == "process" else ""
    title = (f"{Path(s['data']).name}: {s['minutes']:g} {clock}min per model, "
             f"{s['threads']} thread(s) each, {s['parallel']} at a time; "
             f"BPD on {s['curve_images']} held-out images")
    if plot(results, out / "bpd_vs_time.png", title) is None:
        print("matplotlib is not installed: no plot written "
              "(pip install 'flowplug[bench]' or pip install matplotlib)")


# -------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits",
                        help="data set name, .npz file or image folder (flowplug.data.load_dataset)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--recipes", nargs="+", default=["mrcnf", "glow", "realnvp", "single-resolution-cnf"],
                        help="recipes to compare (flowplug recipes lists them)")
    parser.add_argument("--clock", choices=("wall", "process"), default="process",
                        help="what the budget counts: wall time, or CPU seconds of each model's process "
                             "(fair when the cores are shared)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    parser.add_argument("--parallel", type=int, default=1, help="model processes at once")
    parser.add_argument("--split", choices=("random", "last"), default="random",
                        help="random (default): hold out the images flowplug train holds out (10 %%, by --seed); "
                             "last: the last --holdout images")
    parser.add_argument("--holdout", type=int, default=1000,
                        help="with --split last: the last HOLDOUT images are held out (never trained on)")
    parser.add_argument("--eval-images", type=int,
                        help="final BPD over the first EVAL_IMAGES held-out images (default: all of them)")
    parser.add_argument("--curve-images", type=int, default=100,
                        help="held-out images scored at each checkpoint and in the tolerance check")
    parser.add_argument("--checkpoints", type=int, default=4,
                        help="evaluations during training (the budget is split into this many)")
    parser.add_argument("--sample-images", type=int, default=8)
    parser.add_argument("--loose-tol", type=float, default=1e-4,
                        help="the looser atol = rtol of the CNF tolerance check")
    parser.add_argument("--train", type=json.loads, default={},
                        help="JSON object of TrainConfig settings over every recipe's, e.g. '{\"lr\": 0.002}' "
                             "(for experiments; the results page uses none)")
    parser.add_argument("--model-options", type=json.loads, default={},
                        help="JSON object: recipe name -> model spec keys over the recipe's, e.g. "
                             "'{\"mrcnf\": {\"levels\": 3}}' (for experiments)")
    parser.add_argument("--conditional", action="store_true",
                        help="condition every model on the data's class labels (num_classes of the data); the "
                             "BPD is then -log2 p(x | y) / D")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {_QUICK} instead of the given sizes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild results.json/md/png from OUT/runs")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in _QUICK.items():
            setattr(args, key, value)
    for name in ("threads", "parallel", "holdout", "eval_images", "curve_images", "checkpoints",
                 "sample_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.split == "last" and max(args.eval_images or 0, args.curve_images) > args.holdout:
        parser.error("--eval-images and --curve-images must not exceed --holdout")
    if not args.minutes > 0:
        parser.error("--minutes must be positive")
    if not isinstance(args.train, dict) or not isinstance(args.model_options, dict):
        parser.error("--train and --model-options must be JSON objects, e.g. '{\"lr\": 0.002}'")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        write_outputs(args.out, None)
        return
    jobs = build_jobs(args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta: dict[str, Any] = {
        "settings": settings, "hardware": hardware(args.threads, args.parallel, args.device),
        "models": [j["name"] for j in jobs],
        "jobs": jobs, "load_average_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    # settings first, so --report-only can tabulate the finished models of an interrupted run
    (args.out / "results.json").write_text(json.dumps({**meta, "results": []}, indent=2) + "\n")
    t0 = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.parallel, maxtasksperchild=1) as pool:
        outcomes = []
        for result in pool.imap_unordered(_run_safely, jobs):
            status = result.get("error") or f"held-out BPD {result['held_out']['bpd']:.4f}"
            print(f"[{time.monotonic() - t0:7.1f}s] {result['name']}: {status} "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
            outcomes.append(result)
    meta["failures"] = [r for r in outcomes if "error" in r]
    meta["load_average_end"] = os.getloadavg()
    meta["total_wall_time_s"] = round(time.monotonic() - t0, 1)
    write_outputs(args.out, meta)


if __name__ == "__main__":
    main()
