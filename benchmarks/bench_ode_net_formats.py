"""torch.compile and channels-last for the conv ODE net: one flow-matching step of the net (forward+backward).

Run: ``PYTHONPATH=. python benchmarks/bench_ode_net_formats.py [THREADS]`` (default 1 thread). The shape is
MRCNF's finest detail level of a 32×32 RGB image, (9, 16, 16), with its (3, 16, 16) coarse image as context;
batch 64, width 64, 3 layers. The three variants run in interleaved rounds so that load on a shared machine
hits each alike; the first compiled call (the compilation) is timed separately.
"""

import statistics
import sys
import time

import torch

from flowplug.cnf import ConvODENet

BATCH, CHANNELS, SIZE, CONTEXT = 64, 9, 16, 3


def make_net(channels_last: bool = False) -> ConvODENet:
    torch.manual_seed(0)
    net = ConvODENet(CHANNELS, hidden_channels=64, num_layers=3, context_channels=CONTEXT, channels_last=channels_last)
    with torch.no_grad():
        net.layers[-1].weight.normal_(0, 0.05)  # away from the zero start
    return net


def step(net, t, z, context) -> None:
    net(t, z, context=context).pow(2).mean().backward()


def median_time(net, inputs, repeats: int = 5) -> float:
    step(net, *inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(net, *inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    inputs = (torch.rand(BATCH), torch.randn(BATCH, CHANNELS, SIZE, SIZE), torch.randn(BATCH, CONTEXT, SIZE, SIZE))
    nets = {"eager": make_net(), "channels_last": make_net(channels_last=True), "compiled": torch.compile(make_net())}
    start = time.perf_counter()
    step(nets["compiled"], *inputs)
    compile_time = time.perf_counter() - start
    rounds: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(5):
        for name, net in nets.items():
            rounds[name].append(median_time(net, inputs))
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    print(
        f"threads={torch.get_num_threads()} batch={BATCH} z=({CHANNELS},{SIZE},{SIZE}) context={CONTEXT} "
        "width 64, 3 layers; net forward+backward, median of 5 interleaved rounds of 5"
    )
    for name, value in medians.items():
        print(f"{name:14s} {value * 1e3:8.1f} ms  ({value / medians['eager']:.2f}x eager)")
    print(f"first compiled call (compilation): {compile_time:.1f} s")


if __name__ == "__main__":
    main()
