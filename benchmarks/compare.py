"""Side-by-side comparison of MRCNF against single-resolution CNF, Glow and RealNVP.

Every model trains for the same wall-clock budget on the same images through the shared
:class:`flowplug.Trainer`, and is scored by the Trainer's ``evaluate`` (docs/design.md §3: one
dequantisation per pixel, fixed by the seed, BPD averaged over the held-out images, per level for
multi-resolution models); CNF models are scored with their evaluation solver.

Protocol (what the figures mean):

- **Split.** The last ``--holdout`` images of the data set (1,000 by default) are held out and never
  trained on; the final BPD is the mean over the first ``--eval-images`` of them. A data set with its own
  held-out images (``crops<SIZE>``: crops of image regions no training crop touches) trains on all its
  training images and scores its own held-out ones; ``--holdout`` does not apply.
- **Budget and curve.** Training runs in ``--checkpoints`` chunks, chunk ``k`` ending when the
  cumulative training time reaches ``k / checkpoints`` of the budget (repeated ``Trainer.fit``
  calls on the same Trainer, so optimiser state and step count carry over; the budget is checked
  before each step, so a run overshoots by at most one step). After each chunk the model is
  scored on a fixed *curve subset* (the first ``--curve-images`` held-out images); evaluation time
  is not counted as training time. The plot shows that subset's BPD against cumulative training
  time.
- **Solver tolerance.** For CNF models the curve subset is scored once more at the end with
  ``atol = rtol = --loose-tol`` instead of the evaluation solver's tolerances; the two figures side
  by side show whether the reported BPD is converged in the tolerance.
- **Cost.** Time per step is training time / steps (the first step includes data-dependent
  initialisation). NFE is the sum over levels of the evaluation solver's function evaluations per
  batch (all images of a batch share the adaptive steps, so it is also the NFE per image).
  Sampling time is the wall time of drawing ``--sample-images`` images at temperature 1, per image.
  Peak memory is the process's peak RSS on CPU (each model runs in its own process) or
  ``torch.cuda.max_memory_allocated`` on CUDA.
- **Fair share.** Each model runs in its own process with ``torch.set_num_threads(--threads)``;
  ``--parallel`` of them run at once.

Outputs in ``--out``: ``runs/<model>.json`` (one per model, written as each finishes),
``results.json`` (every figure, setting, hardware and version), ``results.md`` (the table) and
``bpd_vs_time.png`` (needs matplotlib: the ``bench`` extra).

    PYTHONPATH=. python benchmarks/compare.py --preset cpu --data ../shared/data/cifar10_batch1.npz \\
        --minutes 10 --parallel 2 --threads 1 --out benchmarks/results/cifar10-cpu
    PYTHONPATH=. python benchmarks/compare.py --report-only --out benchmarks/results/cifar10-cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import platform
import re
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

# the solver of every reported CNF figure
_EVAL_SOLVER = {"method": "dopri5", "atol": 1e-5, "rtol": 1e-5}


def _models(likelihood_solver: dict[str, Any], glow: dict[str, int], realnvp: dict[str, int],
            settings: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The compared models: CNFs of width 64 whose likelihood training solves with ``likelihood_solver``,
    Glow / RealNVP with the given sizes; ``settings`` gives models their own entries: ``trainer`` settings
    (over the preset's) and ``likelihood_share``, the share of the budget spent in a likelihood phase."""
    cnf = {"hidden_channels": 64, "eval_solver": _EVAL_SOLVER}
    models = {
        "mrcnf (likelihood)": {
            "spec": {"type": "mrcnf", "levels": 3, "train_solver": likelihood_solver, **cnf},
            "objective": "likelihood",
        },
        "mrcnf (flow matching)": {"spec": {"type": "mrcnf", "levels": 3, **cnf},
                                  "objective": "flow_matching"},
        "single-resolution CNF": {
            "spec": {"type": "single_resolution_cnf", "train_solver": likelihood_solver, **cnf},
            "objective": "likelihood",
        },
        # issue 12: trained like the MRCNF recipe (flow matching, residual net of the recipe's coarser levels,
        # logit alpha 1e-3), so the two differ only in the resolutions; likelihood training with an adaptive
        # solver (the entry above) is hopeless at 64x64 on a CPU budget
        "single-resolution CNF (flow matching)": {"spec": single_resolution_recipe(), "objective": "flow_matching"},
        **{name: {"spec": mrcnf_recipe(3, *kinds), "objective": "flow_matching"} for name, kinds in _RECIPES.items()},
        "glow": {"spec": {"type": "glow", "levels": 3, **glow}, "objective": "likelihood"},
        "glow (bin warp)": {"spec": {"type": "glow", "levels": 3, **glow, "bin_warp": dict(BIN_WARP)},
                            "objective": "likelihood"},
        "realnvp": {"spec": {"type": "realnvp", "levels": 3, **realnvp},
                    "objective": "likelihood"},
    }
    for name, entry in (settings or {}).items():
        models[name].update(copy.deepcopy(entry))
    return models


def mrcnf_recipe(levels: int, flat_backgrounds: bool, bin_warp: bool = False,
                 deep_finest: bool = False) -> dict[str, Any]:
    """The issue-11 MRCNF (docs/benchmarks.md, "What made the difference"): residual level nets (the coarser levels
    two blocks of width 64; the finest detail level one block, of width 48 for natural images and 64 otherwise,
    or with ``deep_finest`` two blocks of width 64), logit α = 1e-3, for images with flat (black) backgrounds the
    asinh stretch of the detail levels, and with ``bin_warp`` the warp of the black and saturated pixels'
    dequantisation noise (``BIN_WARP``, "The edge-bin warp"). The harness's recipes have the warp and the deep
    finest level; ``resolution.py``'s cost measurements predate both."""
    if deep_finest:
        finest = {"hidden_channels": 64, "num_blocks": 2}
    else:
        finest = {"hidden_channels": 64 if flat_backgrounds else 48, "num_blocks": 1}
    rest = {"hidden_channels": 64, "num_blocks": 2}
    spec: dict[str, Any] = {
        "type": "mrcnf", "levels": levels, "net": "res_odenet",
        "net_options": [finest] + [dict(rest) for _ in range(levels - 1)],
        "logit_alpha": 1e-3, "eval_solver": _EVAL_SOLVER,
    }
    if flat_backgrounds:
        spec["detail_stretch"] = 1 / 256
    if bin_warp:
        spec["bin_warp"] = dict(BIN_WARP)
    return spec


# the edge-bin warp (flowplug.bin_warp; run_model gives it the data's n_bins): a = 1/3 made all-black images
# cost MRCNF 0.004 BPD where a = 1/2 left 0.019 and no warp 0.225 (docs/benchmarks.md, "The edge-bin warp")
BIN_WARP = {"power": 1 / 3}


def single_resolution_recipe() -> dict[str, Any]:
    """The single-resolution CNF trained like :func:`mrcnf_recipe`: one residual net (width 64, two blocks, as the
    recipe's coarser levels) on the full image after a logit with α = 1e-3."""
    return {"type": "single_resolution_cnf", "net": "res_odenet",
            "net_options": {"hidden_channels": 64, "num_blocks": 2}, "logit_alpha": 1e-3,
            "eval_solver": _EVAL_SOLVER}


# the recipe models rebuild their per-level nets when --levels changes the number of levels; (flat backgrounds,
# bin warp, deep finest level) of each: the "one-block finest level" recipes are those of the sections before
# "A deeper finest level", the "no warp" ones those before "The edge-bin warp"
_RECIPES = {"mrcnf (recipe, flat backgrounds)": (True, True, True),
            "mrcnf (recipe, natural images)": (False, True, True),
            "mrcnf (recipe, flat backgrounds, one-block finest level)": (True, True, False),
            "mrcnf (recipe, natural images, one-block finest level)": (False, True, False),
            "mrcnf (recipe, flat backgrounds, no warp)": (True, False, False),
            "mrcnf (recipe, natural images, no warp)": (False, False, False)}
# flow matching at 8e-3, then likelihood fine-tuning of the finest level alone at 2e-3 for the last 35 % of the
# budget (docs/benchmarks.md, "The likelihood phase on the finest level": three times the steps of a phase on
# every level and more gain; 2e-3 was the best of {1, 2, 4}e-3 on MNIST and CIFAR-10; "The likelihood phase's
# length": 35 % the best of {20, 35, 50} % on MNIST, neutral on CIFAR-10); batch 16, the best of {8, 16, 32} on
# MNIST and better than 32 on CIFAR-10 ("Batch size")
_RECIPE_TRAINING = {"trainer": {"lr": 8e-3, "likelihood_lr": 2e-3, "likelihood_levels": [0], "batch_size": 16},
                    "likelihood_share": 0.35}
# Glow's rate from the search on MNIST ("Training settings per model"), its batch the best of {8, 16, 32} on
# CIFAR-10 and within 0.004 BPD of the best on MNIST ("Batch size")
_GLOW_TRAINING = {"trainer": {"lr": 4e-3, "batch_size": 16}}


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "description": "scaled to a 10-minute budget per model on one CPU core",
        "minutes": 10.0,
        "trainer": {"batch_size": 32, "lr": 1e-3, "warmup_steps": 50, "ema_decay": 0.999,
                    "eval_batch_size": 250},
        "models": _models({"method": "dopri5", "atol": 1e-3, "rtol": 1e-3},
                          glow={"depth": 8, "hidden_channels": 128},
                          realnvp={"depth": 4, "hidden_channels": 128},
                          # the learning rates and batch sizes chosen by the equal-effort searches of
                          # docs/benchmarks.md ("Training settings per model", "Batch size"; the others keep
                          # the preset's) and the MRCNF recipes' likelihood phase ("The likelihood phase")
                          settings={"glow": _GLOW_TRAINING, "glow (bin warp)": _GLOW_TRAINING,
                                    **{name: _RECIPE_TRAINING for name in _RECIPES}}),
    },
    "gpu": {
        "description": "paper scale (MRCNF widths 64, Glow L=3 K=32 width 512); written, not yet run",
        "minutes": 240.0,
        "trainer": {"batch_size": 256, "lr": 1e-3, "warmup_steps": 500, "ema_decay": 0.999,
                    "eval_batch_size": 500},
        "models": _models(_EVAL_SOLVER, glow={"depth": 32, "hidden_channels": 512},
                          realnvp={"depth": 4, "hidden_channels": 256}),
    },
}

# smoke-test sizes for --quick (budget, evaluation sizes); the models stay the preset's
_QUICK = {"minutes": 0.2, "eval_images": 16, "curve_images": 8, "checkpoints": 2,
          "sample_images": 2}


# ----------------------------------------------------------------------------------- settings
def slug(name: str) -> str:
    """File-name form of a model's display name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def build_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One job (plain data, sent to a worker process) per selected model."""
    preset = PRESETS[args.preset]
    names = list(preset["models"]) if args.models is None else args.models
    unknown = [n for n in names if n not in preset["models"]]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; preset {args.preset!r} has "
                         f"{list(preset['models'])}")
    jobs = []
    for name in names:
        entry = copy.deepcopy(preset["models"][name])
        if args.levels is not None:
            entry["spec"]["levels"] = args.levels
            if name in _RECIPES:
                entry["spec"] = mrcnf_recipe(args.levels, *_RECIPES[name])
        if entry["spec"]["type"] == "single_resolution_cnf":
            entry["spec"].pop("levels", None)
        trainer = {**preset["trainer"], **entry.get("trainer", {}), **args.trainer_options,
                   "objective": entry["objective"], "seed": args.seed, "clock": args.clock}
        if "likelihood_share" in entry:
            trainer.setdefault("likelihood_minutes", entry["likelihood_share"] * args.minutes)
        jobs.append({
            "name": name, "spec": entry["spec"], "objective": entry["objective"], "trainer": trainer,
            "data": args.data, "holdout": args.holdout, "eval_images": args.eval_images,
            "curve_images": args.curve_images, "checkpoints": args.checkpoints,
            "minutes": args.minutes, "clock": args.clock, "threads": args.threads, "device": args.device,
            "sample_images": args.sample_images, "loose_tol": args.loose_tol,
            "seed": args.seed, "out": str(args.out),
        })
    return jobs


def hardware(args: argparse.Namespace) -> dict[str, Any]:
    """CPU model, cores, threads, load, GPU and library versions of this run."""
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
        "cpu": cpu, "logical_cores": os.cpu_count(), "threads_per_model": args.threads,
        "models_in_parallel": args.parallel, "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "normflows": normflows.__version__, "torchdiffeq": torchdiffeq.__version__,
        "device": args.device,
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


# ------------------------------------------------------------------------------------ worker
def _cnfs(model: torch.nn.Module) -> list[torch.nn.Module]:
    from flowplug.cnf import CNF

    return [m for m in model.modules() if isinstance(m, CNF)]


def _phase_start(phase_minutes: float | None, left_s: float, chunk_s: float, trainer: Any) -> dict[str, Any]:
    """The start of the likelihood phase in a chunk of ``chunk_s`` seconds with ``left_s`` of the budget left:
    its last ``phase_minutes`` of the whole budget are the phase (``likelihood_minutes`` of the chunk's fit
    when it starts inside the chunk, ``likelihood_after`` = now when it is due already)."""
    if phase_minutes is None or trainer.likelihood_from is not None:
        return {}
    into_chunk = left_s - 60 * phase_minutes
    if into_chunk >= chunk_s:
        return {}
    if into_chunk <= 0:
        return {"likelihood_after": trainer.step or 1}
    return {"likelihood_minutes": (chunk_s - into_chunk) / 60}


def _evaluate_at_tolerance(trainer: Any, data: Any, tol: float) -> dict[str, Any]:
    """``trainer.evaluate(data)`` with every CNF's evaluation solver at ``atol = rtol = tol``."""
    cnfs = _cnfs(trainer.eval_model())
    saved = [cnf.eval_solver for cnf in cnfs]
    try:
        for cnf, settings in zip(cnfs, saved, strict=True):
            cnf.eval_solver = replace(settings, atol=tol, rtol=tol)
        return trainer.evaluate(data)
    finally:
        for cnf, settings in zip(cnfs, saved, strict=True):
            cnf.eval_solver = settings


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def run_model(job: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate and time one model (runs in its own process); writes runs/<slug>.json."""
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    import flowplug
    from flowplug.data import ImageData, has_own_held_out, load_dataset
    from flowplug.train.trainer import TrainConfig, Trainer

    started = time.monotonic()
    data = load_dataset(job["data"])
    if has_own_held_out(job["data"]):
        train, held = data, load_dataset(job["data"], train=False).x
        if max(job["eval_images"], job["curve_images"]) > len(held):
            raise ValueError(f"--eval-images and --curve-images must not exceed the {len(held)} held-out "
                             f"images of {job['data']}")
    else:
        if not 0 < job["holdout"] < len(data):
            raise ValueError(f"--holdout {job['holdout']} must lie between 0 and the "
                             f"{len(data)} images of {job['data']}")
        train = ImageData(data.x[: -job["holdout"]], data.n_bins, f"{data.name}[train]")
        held = data.x[-job["holdout"]:]
    evaluation = ImageData(held[: job["eval_images"]], data.n_bins, f"{data.name}[held-out]")
    curve_set = ImageData(held[: job["curve_images"]], data.n_bins, f"{data.name}[curve]")

    spec = {**job["spec"], "image_shape": list(data.image_shape)}
    if spec.get("bin_warp") is not None:  # the warp acts on the data's own quantisation bins
        spec["bin_warp"] = {**spec["bin_warp"], "n_bins": data.n_bins}
    model = flowplug.build(spec)
    budget_s = 60 * job["minutes"]
    options = dict(job["trainer"])
    # the likelihood phase counts back from the end of the whole budget, each chunk's fit from its own end
    phase = options.pop("likelihood_minutes", None)
    config = TrainConfig(minutes=job["minutes"] / job["checkpoints"], schedule="constant",
                         progress=False, tensorboard=False, **options)
    trainer = Trainer(model, config, device=job["device"])
    is_cnf = bool(_cnfs(model))

    curve, train_time, wall_train_time = [], 0.0, 0.0
    for k in range(1, job["checkpoints"] + 1):
        # each chunk runs up to its share of the total budget, so a step that overruns one
        # chunk shortens the next and the whole run overruns by at most one step
        chunk_s = budget_s * k / job["checkpoints"] - train_time
        if chunk_s <= 0:
            continue
        trainer.config = replace(trainer.config, minutes=chunk_s / 60,
                                 **_phase_start(phase, budget_s - train_time, chunk_s, trainer))
        report = trainer.fit(train)
        train_time += report["budget_time_s"]  # on the budget's clock (--clock)
        wall_train_time += report["train_time_s"]
        t0 = time.monotonic()
        scored = trainer.evaluate(curve_set)
        curve.append({"train_time_s": round(train_time, 2), "steps": trainer.step,
                      "bpd": scored["bpd"], "eval_time_s": round(time.monotonic() - t0, 2)})

    t0 = time.monotonic()
    held_out = trainer.evaluate(evaluation)
    eval_time = time.monotonic() - t0
    tolerance = None
    if is_cnf:
        loose = _evaluate_at_tolerance(trainer, curve_set, job["loose_tol"])
        eval_tol = _cnfs(model)[0].eval_solver
        tolerance = {"images": len(curve_set),
                     f"bpd_tol_{job['loose_tol']:g}": loose["bpd"],
                     f"bpd_tol_{eval_tol.atol:g}": curve[-1]["bpd"],
                     f"nfe_tol_{job['loose_tol']:g}": loose.get("nfe")}

    t0 = time.monotonic()
    trainer.sample(job["sample_images"])
    sample_time = (time.monotonic() - t0) / job["sample_images"]

    result = {
        "name": job["name"], "spec": model.config, "objective": job["objective"],
        "trainer": {**asdict(config), "likelihood_minutes": phase},
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": trainer.step, "likelihood_from_step": trainer.likelihood_from,
        "skipped_steps": trainer.skipped_steps,
        "train_time_s": round(train_time, 2), "clock": job["clock"],
        "wall_train_time_s": round(wall_train_time, 2),
        "time_per_step_s": train_time / trainer.step if trainer.step else None,
        "held_out": held_out, "held_out_eval_time_s": round(eval_time, 2),
        "levels": len(held_out["per_level_bpd"]),
        "nfe_eval": held_out.get("nfe"), "solver_tolerance_check": tolerance,
        "curve": curve, "sample_time_per_image_s": sample_time,
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
        tol_text = "—" if tol is None else " / ".join(
            f"{v:.4f}" for k, v in tol.items() if k.startswith("bpd_tol"))
        lines.append(
            f"| {r['name']} | {_rates(r['trainer'])} | {r['trainer']['batch_size']} | {r['parameters']:,} | "
            f"{r['steps']:,} | "
            f"{_fmt(r['time_per_step_s'], 3)} | {r['held_out']['bpd']:.3f} | {per_level} | "
            f"{_fmt(r['nfe_eval'], 0)} | {tol_text} | {r['sample_time_per_image_s']:.3f} | "
            f"{r['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _rates(trainer: dict[str, Any]) -> str:
    """The table's learning-rate cell: the rate, and the likelihood phase's when the run had one."""
    if trainer.get("likelihood_minutes") is None:
        return f"{trainer['lr']:g}"
    phase_lr = trainer.get("likelihood_lr") or trainer["lr"]
    return f"{trainer['lr']:g}, last {trainer['likelihood_minutes']:g} min likelihood at {phase_lr:g}"


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
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--data", default="digits",
                        help="data set name, .npz file or image folder (flowplug.data.load_dataset)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget per model (default: the preset's)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="display names of the preset's models to run (default: all)")
    parser.add_argument("--levels", type=int, default=None,
                        help="override every model's number of levels (e.g. 2 for 28x28 MNIST)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="what the budget counts: wall time, or CPU seconds of each model's process "
                             "(fair when the cores are shared)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    parser.add_argument("--parallel", type=int, default=1, help="model processes at once")
    parser.add_argument("--holdout", type=int, default=1000,
                        help="the last HOLDOUT images are held out (never trained on)")
    parser.add_argument("--eval-images", type=int, default=1000,
                        help="final BPD over the first EVAL_IMAGES held-out images")
    parser.add_argument("--curve-images", type=int, default=100,
                        help="held-out images scored at each checkpoint and in the tolerance check")
    parser.add_argument("--checkpoints", type=int, default=4,
                        help="evaluations during training (the budget is split into this many)")
    parser.add_argument("--sample-images", type=int, default=8)
    parser.add_argument("--loose-tol", type=float, default=1e-4,
                        help="the looser atol = rtol of the CNF tolerance check")
    parser.add_argument("--trainer-options", type=json.loads, default={},
                        help="JSON object of TrainConfig settings for every selected model, over the "
                             "preset's and the model's own (e.g. '{\"lr\": 0.002}')")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {_QUICK} instead of the given sizes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild results.json/md/png from OUT/runs")
    args = parser.parse_args(argv)
    if args.minutes is None:
        args.minutes = PRESETS[args.preset]["minutes"]
    if args.quick:
        for key, value in _QUICK.items():
            setattr(args, key, value)
    for name in ("threads", "parallel", "holdout", "eval_images", "curve_images", "checkpoints",
                 "sample_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.eval_images > args.holdout or args.curve_images > args.holdout:
        parser.error("--eval-images and --curve-images must not exceed --holdout")
    if not args.minutes > 0:
        parser.error("--minutes must be positive")
    if not isinstance(args.trainer_options, dict):
        parser.error("--trainer-options must be a JSON object, e.g. '{\"lr\": 0.002}'")
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
        "preset": args.preset, "preset_description": PRESETS[args.preset]["description"],
        "settings": settings, "hardware": hardware(args), "models": [j["name"] for j in jobs],
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
