"""Cost of one CNF training step: single resolution vs three MRCNF levels, trace and gradient modes.

Prints a Markdown table of forward+backward time, NFE (forward / adjoint backward) and peak memory
per batch, for:

- one CNF at (3, 32, 32) (the single-resolution setting) against the three MRCNF levels
  (3, 8, 8) + (9, 8, 8 | context 3x8x8) + (9, 16, 16 | context 3x16x16) with the same net width,
  each with direct backpropagation and with the adjoint;
- Hutchinson against the exact trace on one small level (the exact trace costs D vector-Jacobian
  products per evaluation, so it is measured where D is small).

Every row uses the same fixed-step solver (rk4), so NFE is equal by construction and the times
compare the cost per evaluation; nets are randomly perturbed away from the identity. Each
configuration runs in its own subprocess so that peak memory (CUDA: ``max_memory_allocated``; CPU:
growth of the peak RSS over the set-up, so it includes the warm-up step) is its own. Ratios are of
times measured in this one run.

    PYTHONPATH=. python benchmarks/bench_cnf.py [--quick] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import statistics
import time

import torch

from flowplug.cnf import CNF, ConvODENet

SINGLE = [((3, 32, 32), None)]
MRCNF = [((3, 8, 8), None), ((9, 8, 8), (3, 8, 8)), ((9, 16, 16), (3, 16, 16))]


def _levels(name: str, small: tuple[int, int, int]) -> list:
    return {"single": SINGLE, "mrcnf": MRCNF, "small": [(small, None)]}[name]


def _run(config: dict, queue) -> None:
    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    torch.manual_seed(0)
    flows, inputs = [], []
    for shape, context_shape in _levels(config["levels"], config["small"]):
        net = ConvODENet(shape[0], hidden_channels=config["width"],
                         context_channels=context_shape[0] if context_shape else 0)
        with torch.no_grad():
            net.layers[-1].weight.normal_(0, 0.05)
        cnf = CNF(net, divergence=config["divergence"], adjoint=config["adjoint"],
                  train_solver={"method": "rk4", "step_size": config["step_size"]}).to(device)
        x = torch.randn(config["batch"], *shape, device=device)
        context = (
            torch.randn(config["batch"], *context_shape, device=device) if context_shape else None
        )
        flows.append(cnf)
        inputs.append((x, context))

    def step() -> tuple[int, int]:
        loss = 0
        for cnf, (x, context) in zip(flows, inputs, strict=True):
            z, log_det = cnf.inverse(x, context)
            loss = loss + (0.5 * z.square().flatten(1).sum(1) - log_det).mean()
        loss.backward()
        return sum(c.last_nfe for c in flows), sum(c.last_nfe_backward for c in flows)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up
    sync()
    times = []
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        nfe = step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024
    queue.put((statistics.median(times), nfe, peak_mb))


def measure(config: dict) -> tuple[float, tuple[int, int], float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(config, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="narrow nets, few steps and repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    base = {
        "device": args.device, "threads": args.threads, "batch": 64,
        "width": 16 if args.quick else 64, "step_size": 0.5 if args.quick else 0.25,
        "repeats": 2 if args.quick else 5, "small": (1, 4, 4) if args.quick else (3, 8, 8),
        "divergence": "hutchinson", "adjoint": False,
    }
    rows = [
        ("single (3,32,32)", {"levels": "single"}),
        ("MRCNF 3 levels", {"levels": "mrcnf"}),
        ("single (3,32,32), adjoint", {"levels": "single", "adjoint": True}),
        ("MRCNF 3 levels, adjoint", {"levels": "mrcnf", "adjoint": True}),
        (f"{base['small']} Hutchinson", {"levels": "small"}),
        (f"{base['small']} exact", {"levels": "small", "divergence": "exact"}),
    ]
    results = {label: measure({**base, **changes}) for label, changes in rows}

    print(f"CNF training step, batch {base['batch']}, ConvODENet width {base['width']} (3 layers, "
          f"softplus), rk4 step {base['step_size']} over T=1, median of {base['repeats']} after a "
          f"warm-up; {args.device}, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}\n")
    print("| configuration | fwd+bwd time (s) | NFE fwd / bwd | peak memory (MiB) |")
    print("|---|---|---|---|")
    for label, _ in rows:
        seconds, (nfe, nfe_backward), peak = results[label]
        print(f"| {label} | {seconds:.3f} | {nfe} / {nfe_backward} | {peak:.0f} |")
    print()
    for mode in ("", ", adjoint"):
        single = results[f"single (3,32,32){mode}"][0]
        levels = results[f"MRCNF 3 levels{mode}"][0]
        print(f"- MRCNF / single time{mode or ', direct'}: {levels / single:.3f} (target <= 0.25)")
    small = f"{base['small']}"
    ratio = results[f"{small} exact"][0] / results[f"{small} Hutchinson"][0]
    print(f"- exact / Hutchinson time at {small}: {ratio:.2f}")


if __name__ == "__main__":
    main()
