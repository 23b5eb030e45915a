#!/usr/bin/python3
"""bench_torch.py: the PyTorch side of bench/run.sh.

    bench_torch.py CONFIG MODE LAYOUT [--warmup N] [--steps N] [--threads N]

CONFIG is w64 (3x32x32 input, width 64) or w16 (1x28x28, width 16); MODE is
train (forward, backward and an SGD step with momentum 0.9 and weight decay
5e-4, batch-norm in training mode), eval (forward under no_grad, eval mode)
or gus (the gradient of the summed per-sample cross entropy with respect to
the input, eval mode, parameters frozen: the Gaussian Unlearning Score
pass), or craft (one Witches' Brew step on CRAFT_POISONS poisons, eval
mode: the poison batch's gradient over all parameters with
create_graph=True, 1 - cosine against a target gradient computed once
beforehand, its gradient with respect to the images, signed Adam and the
projection onto the L-inf ball and the box; bench/craft.lth is the Lethe
side); LAYOUT is nchw or cl (channels_last). The network is the CIFAR
ResNet-18 of graphs/models/resnet18.lth (kuangliu/pytorch-cifar): a 3x3
stem at stride 1 without max-pool, BasicBlocks [2, 2, 2, 2], global average
pooling and a linear head, batch 128, 10 classes.

One process times one configuration, so its peak resident memory (getrusage:
the whole process, interpreter and libraries included) belongs to it alone.
Prints one line of key=value pairs, like bench_resnet.c (cpu_min_s: the
least process CPU time of a step, all threads).
"""
import argparse
import os
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x))


class ResNet18(nn.Module):
    def __init__(self, width, channels, classes=10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        cfg = [(w, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1),
               (2 * w, 4 * w, 2), (4 * w, 4 * w, 1), (4 * w, 8 * w, 2), (8 * w, 8 * w, 1)]
        self.layers = nn.Sequential(*[BasicBlock(a, b, s) for a, b, s in cfg])
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = out.mean(dim=(2, 3))
        return self.fc(out)


CONFIGS = {"w64": (64, 3, 32), "w16": (16, 1, 28)}
CRAFT_POISONS = 32   # the poison batch of bench/craft.lth


def craft_step(model, channels, size, fmt):
    """A Witches' Brew step as graphs/attacks/witches_brew.lth writes it
    (augment = 0): eps 16/255 at pixel scale 1, the box [-1, 1], signed Adam
    with lr 0.1, b1 0.9, b2 0.999 and 1e-8 in the denominator."""
    model.eval()
    params = list(model.parameters())
    xt = torch.rand(1, channels, size, size).mul_(2).sub_(1).contiguous(memory_format=fmt)
    adv = torch.randint(0, 10, (1,))
    target_grad = [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(xt), adv), params)]
    target_norm = torch.sqrt(sum((g * g).sum() for g in target_grad))
    x = torch.rand(CRAFT_POISONS, channels, size, size).mul_(2).sub_(1).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (CRAFT_POISONS,))
    delta, m, v = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    eps, lr, b1, b2, t = 16.0 / 255, 0.1, 0.9, 0.999, [0]

    def step():
        d = delta.detach().requires_grad_(True)
        poison_grad = torch.autograd.grad(F.cross_entropy(model(x + d), y), params, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(target_grad, poison_grad))
        loss = 1 - dot / (target_norm * torch.sqrt(sum((b * b).sum() for b in poison_grad)))
        (g,) = torch.autograd.grad(loss, d)
        with torch.no_grad():
            s = g.sign()
            m.mul_(b1).add_(s, alpha=1 - b1)
            v.mul_(b2).addcmul_(s, s, value=1 - b2)
            t[0] += 1
            delta.sub_(lr * (m / (1 - b1 ** t[0])) / ((v / (1 - b2 ** t[0])).sqrt_() + 1e-8))
            delta.clamp_(-eps, eps)
            torch.maximum(torch.minimum(delta, 1 - x), -1 - x, out=delta)
        return loss
    return step


def count_macs(model, x):
    """Multiply-accumulates per image of every Conv2d and Linear (forward
    hooks, as PERF-ANCHORS counts them), and those of the stem."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append((m, out.numel() // out.shape[0] * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]))
        elif isinstance(m, nn.Linear):
            macs.append((m, out.numel() // out.shape[0] * m.in_features))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return sum(n for _, n in macs), sum(n for m, n in macs if m is model.conv1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", choices=CONFIGS)
    ap.add_argument("mode", choices=["train", "eval", "gus", "craft", "macs"])
    ap.add_argument("layout", choices=["nchw", "cl"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    # one thread per CPU, as the Lethe side; set explicitly because libgomp
    # can settle on 1 in a container whatever the CPU count
    torch.set_num_threads(a.threads if a.threads > 0 else os.cpu_count())
    torch.manual_seed(0)
    width, channels, size = CONFIGS[a.config]
    fmt = torch.channels_last if a.layout == "cl" else torch.contiguous_format
    model = ResNet18(width, channels).to(memory_format=fmt)
    x = torch.rand(128, channels, size, size).mul_(2).sub_(1).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (128,))
    if a.mode == "macs":
        macs, stem = count_macs(model, x)
        print("macs_per_image=%d stem_macs_per_image=%d" % (macs, stem))
        return

    if a.mode == "craft":
        step = craft_step(model, channels, size, fmt)
    elif a.mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    elif a.mode == "eval":
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
            loss = F.cross_entropy(model(xg), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
            return g

    for _ in range(a.warmup):
        step()
    times, cpu = [], []
    for _ in range(max(a.steps, 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("entry=%s_%s layout=%s median_s=%.5f min_s=%.5f max_s=%.5f cpu_min_s=%.5f steps=%d threads=%d peak_rss_mb=%.1f"
          % (a.mode, a.config, a.layout, statistics.median(times), min(times), max(times), min(cpu), len(times),
             torch.get_num_threads(), rss))


if __name__ == "__main__":
    main()
