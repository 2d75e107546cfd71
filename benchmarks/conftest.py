"""Benchmarks run single-threaded unless told otherwise, so figures on a shared machine are comparable."""

import os

import torch

torch.set_num_threads(int(os.environ.get("FLOWPLUG_BENCH_THREADS", "1")))
