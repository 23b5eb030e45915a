#!/usr/bin/env python3
"""bench_torch_gpu.py: the PyTorch side of tests/gpu/run.sh's timing.

    bench_torch_gpu.py ENTRY... [--warmup N] [--steps N] [--tf32]

ENTRY is MODE_CONFIG as in bench/resnet18.lth (train_w64, eval_w64, gus_w64,
train_w16, ...): the CIFAR ResNet-18 of graphs/models/resnet18.lth, batch 128,
from bench/bench_torch.py (shipped beside this file). Each entry runs on the
GPU in NCHW and channels_last, FP32 with TF32 off (Lethe's kernels and its
cuBLAS calls do not use TF32 either; --tf32 turns it on for both cuBLAS and
cuDNN, to compare with LETHE_CUDA_TF32=1) and cuDNN autotuning on; the faster
layout counts. Inputs already live on the GPU. Prints one key=value line per
entry, like lethe-gpu-test bench: median, min and max milliseconds per step.
"""
import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

from bench_torch import CONFIGS, ResNet18


def time_entry(entry, warmup, steps):
    mode, config = entry.split("_")
    width, channels, size = CONFIGS[config]
    best = None
    for layout in ("nchw", "cl"):
        fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
        torch.manual_seed(0)
        model = ResNet18(width, channels).cuda().to(memory_format=fmt)
        x = torch.rand(128, channels, size, size, device="cuda").mul_(2).sub_(1).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (128,), device="cuda")
        if mode == "train":
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

            def step():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
        elif mode == "eval":
            model.eval()

            def step():
                with torch.no_grad():
                    model(x)
        else:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)

            def step():
                xg = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
                return g

        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        med = statistics.median(times)
        if best is None or med < best[1]:
            best = (layout, med, min(times), max(times), sum(times))
    layout, med, lo, hi, total = best
    print("entry=%s layout=%s median_ms=%.3f min_ms=%.3f max_ms=%.3f total_ms=%.1f steps=%d device=\"%s\" torch=%s "
          "cuda=%s cudnn=%s tf32=%d" % (entry, layout, med, lo, hi, total, steps, torch.cuda.get_device_name(),
                                        torch.__version__, torch.version.cuda, torch.backends.cudnn.version(),
                                        torch.backends.cuda.matmul.allow_tf32), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("entries", nargs="+")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tf32", action="store_true", help="TF32 tensor cores in cuBLAS and cuDNN")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("SKIP pytorch: torch.cuda.is_available() is false")
        return 77
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = True
    for e in a.entries:
        time_entry(e, a.warmup, a.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
