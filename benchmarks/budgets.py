"""Held-out BPD against the training budget: the recipes trained from the command line at several budgets.

    python benchmarks/budgets.py --data ../shared/data/mnist_test.npz ../shared/data/fashion_mnist_test2k.npz \\
        --recipes mrcnf glow --minutes 2.5 5 10 30 --seeds 0 --out benchmarks/results/budgets

Every (data, recipe, budget, seed) is one run of the command a user types,
``flowplug train --recipe R --data D --minutes M --seed S --clock process --threads 1 --no-progress``, in
``RUNS/<data>-<recipe>-m<minutes>-s<seed>`` (``--runs``, default ``OUT/runs``). A recipe fits its training plan
to the budget (its phases are fractions of it), so each budget is a run of its own, not a point on a longer run's
curve. ``--parallel`` runs go at once (two on a 2-core machine: one thread each, the process clock counting each
one's own CPU seconds). A run whose folder holds its report is not run again, so an interrupted table resumes
where it stopped; run folders made elsewhere by the same command can be moved in under the same names.

The table takes from each run's ``report.json`` the held-out BPD (every image the command held out, scored with
the recipe's evaluation solver), the steps and the function evaluations per image (NFE, CNFs only). Then, in this
process, one thread, each run's EMA weights draw ``--sample-images`` images at temperature 1 with the recipe's
solver, timed on the process clock: the sampling cost per image and its ratio to Glow's of the same data, budget
and seed. Outputs: ``OUT/results.json`` (every figure and the commands), ``OUT/results.md`` (one table per data
set) and ``OUT/bpd_vs_budget.png`` (needs matplotlib). ``--report-only`` rebuilds them from the run folders;
``--add FILE`` adds the figures of runs whose folders are gone
(they fill the cells of planned runs without a report; of several files, a later one's run of a cell replaces an
earlier one's). The recipes' columns follow ``--recipes``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flowplug  # noqa: F401  (thread policy before torch)

# isort: split

import torch

from flowplug.threads import set_threads
from flowplug.train import load_checkpoint
from flowplug.train.checkpoint import build_model
from flowplug.train.run_folder import RunFolder

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare.py lies beside this script
from compare import hardware


def run_name(data: str, recipe: str, minutes: float, seed: int) -> str:
    """The run folder's name: the data file's stem, the recipe, the budget and the seed."""
    return f"{Path(data).stem}-{recipe}-m{minutes:g}-s{seed}"


def train_command(data: str, recipe: str, minutes: float, seed: int, threads: int, folder: Path) -> list[str]:
    """The ``flowplug train`` command of one run, as a user would type it (run as ``python -m flowplug ...``)."""
    return ["flowplug", "train", "--recipe", recipe, "--data", data, "--minutes", f"{minutes:g}",
            "--seed", str(seed), "--clock", "process", "--threads", str(threads), "--no-progress",
            "--out", str(folder)]


def plan_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per run, budgets in the outer loop so that short runs finish first."""
    runs = []
    for minutes, data, seed, recipe in itertools.product(args.minutes, args.data, args.seeds, args.recipes):
        folder = (args.runs or args.out / "runs") / run_name(data, recipe, minutes, seed)
        runs.append({"data": data, "recipe": recipe, "minutes": minutes, "seed": seed, "folder": folder,
                     "command": train_command(data, recipe, minutes, seed, args.threads, folder)})
    return runs


def _train(run: dict[str, Any]) -> str:
    """Run one training command unless its report exists; its output goes to ``<folder>.log``."""
    folder = run["folder"]
    if RunFolder(folder).report_json.exists():
        return f"{folder.name}: done before"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".log"), "w") as log:
        code = subprocess.call([sys.executable, "-m", *run["command"]], stdout=log, stderr=subprocess.STDOUT)
    return f"{folder.name}: " + ("trained" if code == 0 else f"failed with exit code {code}, see its .log")


def sampling_seconds_per_image(folder: Path, images: int, seed: int = 0) -> float:
    """CPU seconds per image of drawing ``images`` images at temperature 1 from the run's best EMA weights as
    ``flowplug sample`` does (images without their log-density, :meth:`~flowplug.FlowModel.sample_images`), after
    one untimed draw (the first call pays for lazy initialisation)."""
    model = build_model(load_checkpoint(RunFolder(folder).best), use_ema=True).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        model.sample_images(2)
        start = time.process_time()
        model.sample_images(images)
    return (time.process_time() - start) / images


def gather(runs: list[dict[str, Any]], sample_images: int) -> list[dict[str, Any]]:
    """Each finished run's figures (a run without a report is listed with ``"missing": true``)."""
    rows = []
    for run in runs:
        folder = RunFolder(run["folder"])
        row = {key: run[key] for key in ("data", "recipe", "minutes", "seed")}
        row["command"] = " ".join(run["command"])
        if not folder.report_json.exists():
            rows.append({**row, "missing": True})
            continue
        report = json.loads(folder.report_json.read_text())
        rows.append({**row, "bpd": report["held_out"]["bpd"], "nfe": report["held_out"].get("nfe"),
                     "held_out_images": report["held_out"]["num_images"], "steps": report["steps"],
                     "phase_starts": report.get("phase_starts"), "parameters": report["parameters"],
                     "budget_time_s": report["budget_time_s"],
                     "sample_s_per_image": sampling_seconds_per_image(folder.root, sample_images)})
    return rows


def _cell(row: dict[str, Any]) -> tuple[str, str, float, int]:
    return row["data"], row["recipe"], row["minutes"], row["seed"]


def merge(planned: list[dict[str, Any]], added: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The planned runs' rows and the added ones; an added row takes the place of a planned run that is missing
    from the run folders (a run of the same data, recipe, budget and seed), and a finished run's row is kept
    over an added one. Of added rows of the same cell the last counts (a later ``--add`` file supersedes an
    earlier one); added rows of missing runs are left out."""
    finished = {_cell(row) for row in planned if "bpd" in row}
    latest = {_cell(row): row for row in added if not row.get("missing") and _cell(row) not in finished}
    return [row for row in planned if _cell(row) not in latest] + list(latest.values())


def recipe_order(rows: list[dict[str, Any]], recipes: list[str]) -> list[str]:
    """The table's recipe columns: those of ``recipes`` in its order, then the rows' others as they come."""
    return list(dict.fromkeys([*recipes, *(row["recipe"] for row in rows)]))


def in_table_order(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Rows by budget and seed, then recipe in ``order`` (data sets keep their order)."""
    return sorted(rows, key=lambda row: (row["minutes"], row["seed"], order.index(row["recipe"])))


def _glow_time(rows: list[dict[str, Any]], row: dict[str, Any]) -> float | None:
    for other in rows:
        if other["recipe"] == "glow" and "bpd" in other and all(
                other[key] == row[key] for key in ("data", "minutes", "seed")):
            return other["sample_s_per_image"]
    return None


def markdown(rows: list[dict[str, Any]], order: list[str] | None = None) -> str:
    """One table per data set: a row per budget and seed, a column per recipe (in ``order``, by default as the
    rows bring them)."""
    recipes = recipe_order(rows, order or [])
    header = ("| minutes | seed | " + " | ".join(f"`{r}` BPD" for r in recipes)
              + " | steps | NFE / image | sampling s / image (× Glow's) |")
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        out += [f"**{Path(data).name}**", "", header, "|" + "---|" * (header.count("|") - 1)]
        of_data = [r for r in rows if r["data"] == data]
        for minutes, seed in dict.fromkeys((r["minutes"], r["seed"]) for r in of_data):
            cells = {r["recipe"]: r for r in of_data if (r["minutes"], r["seed"]) == (minutes, seed)}
            done = [cells[name] for name in recipes if "bpd" in cells.get(name, {})]
            if not done:
                continue
            best = min(r["bpd"] for r in done) if len(done) > 1 else None  # bold: the best of two or more
            bpd = [("—" if "bpd" not in cells.get(name, {}) else
                    (f"**{cells[name]['bpd']:.4f}**" if cells[name]["bpd"] == best else f"{cells[name]['bpd']:.4f}"))
                   for name in recipes]
            steps = " / ".join(f"{r['steps']:,}" for r in done)
            nfe = " / ".join(f"{r['nfe']:.0f}" for r in done if r.get("nfe") is not None) or "—"
            times = []
            for r in done:
                if r.get("sample_s_per_image") is None:
                    times.append("—")
                    continue
                glow = _glow_time(rows, r)
                ratio = f" ({r['sample_s_per_image'] / glow:.0f}×)" if glow and r["recipe"] != "glow" else ""
                times.append(f"{r['sample_s_per_image']:.3f}{ratio}")
            out.append(f"| {minutes:g} | {seed} | " + " | ".join(bpd) + f" | {steps} | {nfe} | {' / '.join(times)} |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Held-out BPD against the budget, a panel per data set, a line per recipe (seeds averaged)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    datas = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(datas), figsize=(4.5 * len(datas), 3.8), squeeze=False)
    for ax, data in zip(axes[0], datas, strict=True):
        done = [r for r in rows if r["data"] == data and "bpd" in r]
        for recipe in dict.fromkeys(r["recipe"] for r in done):
            by_budget: dict[float, list[float]] = {}
            for r in done:
                if r["recipe"] == recipe:
                    by_budget.setdefault(r["minutes"], []).append(r["bpd"])
            budgets = sorted(by_budget)
            ax.plot(budgets, [sum(by_budget[m]) / len(by_budget[m]) for m in budgets], marker="o", label=recipe)
        ax.set_xscale("log")
        ticks = sorted({r["minutes"] for r in done})
        ax.set_xticks(ticks, [f"{m:g}" for m in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training budget (CPU-minutes, one thread)")
        ax.set_ylabel("held-out BPD")
        ax.set_title(Path(data).name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="data sets (files or flowplug's names)")
    parser.add_argument("--recipes", nargs="+", default=["mrcnf", "glow"])
    parser.add_argument("--minutes", nargs="+", type=float, required=True, help="training budgets, CPU-minutes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once")
    parser.add_argument("--sample-images", type=int, default=64, help="images drawn to time sampling")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=Path, help="where the run folders go (default OUT/runs; they hold "
                        "checkpoints, so keep them out of a repository)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; tabulate the run folders")
    parser.add_argument("--add", type=Path, nargs="+", default=[], metavar="JSON",
                        help="also tabulate these runs' figures (files holding a 'runs' list like results.json's, "
                             "for runs whose folders are gone; 'sample_s_per_image' may be null); a later file's "
                             "run of the same data, recipe, budget and seed replaces an earlier file's")
    args = parser.parse_args(argv)
    for name in ("threads", "parallel", "sample_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not all(m > 0 for m in args.minutes):
        parser.error("--minutes must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = plan_runs(args)
    if not args.report_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            for message in pool.map(_train, runs):
                print(message, flush=True)
    set_threads(1)
    rows = merge(gather(runs, args.sample_images), [row for path in args.add
                                                     for row in json.loads(path.read_text())["runs"]])
    order = recipe_order(rows, args.recipes)
    rows = in_table_order(rows, order)
    result = {"settings": vars(args),
              "hardware": hardware(args.threads, args.parallel),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")  # paths as text
    table = markdown(rows, order)
    (args.out / "results.md").write_text(table)
    print(table)
    if not plot(rows, args.out / "bpd_vs_budget.png"):
        print("matplotlib is not installed: no plot written (pip install matplotlib)")


if __name__ == "__main__":
    main()
