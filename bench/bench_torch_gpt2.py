#!/usr/bin/python3
"""bench_torch_gpt2.py: the PyTorch side of bench/run_gpt2.sh.

    bench_torch_gpt2.py CONFIG ENTRY [--warmup N] [--steps N] [--threads N]
                        [--batch N] [--device cuda [--tf32]]

CONFIG is gpt2 (124M: 12 layers, C = 768, 12 heads, vocabulary 50257, 1024
positions) or tiny (2 layers, C = 64, 4 heads, vocabulary 512, 128
positions: bench/gpt2_tiny.lth, for checking the harness). ENTRY names the
pass as bench/gpt2.lth does, batch 4:

  train_t64, train_t128   forward, backward and torch.optim.AdamW (lr 6e-4,
                          weight decay 0.01) after clip_grad_norm_(1.0), T =
                          64 or 128: graphs/train/adamw.lth's adamw_lm
  eval_t128               the LM loss under no_grad, eval mode
  embgrad_t128            the gradient of the LM loss with respect to the
                          input embeddings (inputs_embeds), parameters frozen
  train_t1024, eval_t1024 the same at T = 1024: tests/gpu/run.sh times them
                          on a GPU (--device cuda --batch 8; tests/gpu/gpt2_bench.lth),
                          with TF32 off unless --tf32, the device synchronised
                          after every step

The model is GPT-2 in float32 written from Hugging Face's formulas, as
tests/reference/make_gpt2_reference.py writes it in float64 (transformers is
not in Debian): token + position embeddings, pre-LN blocks, causal
multi-head attention with the masked scores at finfo.min, Conv1D layers (x @
weight + bias, weight [in, out]), an MLP of 4C with gelu_new (PyTorch's
fused tanh GELU, the same function), ln_f, the LM head tied to wte; the LM
loss is HF's (labels = ids, -100 at padding; here every position is real).
The settings that make it fastest are the caller's environment
(bench/run_gpt2.sh sets them for both sides); measured here on the 2-CPU
Zen 5 VM (torch 1.13 from Debian, OpenBLAS 0.3.21 pthreads, jemalloc
5.3), train_t64 at B = 4, each setting its own process, alternating
rounds, 2 warm-up and 3 timed steps; process CPU seconds per step (median)
on one thread, as the machine was shared (load 6-9), so wall times were
not comparable:

  setting (all: OPENBLAS_CORETYPE unset, OMP_WAIT_POLICY=PASSIVE,   CPU s/step   page faults
  OPENBLAS_NUM_THREADS=1)                                           round 1, 2   per process
  jemalloc, default MALLOC_CONF (PERF-ANCHORS' "tuned")             8.55, 9.28   3,050,000
  glibc malloc, GLIBC_TUNABLES=glibc.malloc.hugetlb=1               2.35, 2.23      60,000
  jemalloc, MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,
    muzzy_decay_ms:-1,thp:always,metadata_thp:always ("kept")       1.74, 1.74      31,000
  kept + ATEN_CPU_CAPABILITY=avx512 (torch picks AVX2 here)         1.81, 1.75      31,000
  kept + AdamW(foreach=True) (peak RSS 3.46 GB, not 2.93)           1.69, 1.90      31,000
  kept + zero_grad(set_to_none=False)                               2.13, 2.23      31,000
  glibc, MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=
    68719476736 MALLOC_TOP_PAD_=1073741824                          2.51, 2.00     780,000
  the same + GLIBC_TUNABLES=glibc.malloc.hugetlb=1                  1.88, 1.70      30,000
  jemalloc, kept without thp:always, metadata_thp:always            1.76, 1.83     690,000

  on 2 threads, kept, wall s/step (median), rounds 1-3:
  OMP_WAIT_POLICY=PASSIVE                                           6.18, 1.99, 1.89
  OMP_WAIT_POLICY=ACTIVE (CPU s/step 10.2, 4.4, 5.6)                20.4, 4.27, 5.53
  PASSIVE + OPENBLAS_THREAD_TIMEOUT=4                               1.77, 2.09, 3.64

The page faults are the cause: this model's step allocates ~2.4 GB afresh
(gradients, AdamW's sqrt and division temporaries, activations; the
[50257, 768] tensors at 154 MB each), jemalloc serves requests over 8 MiB
from an arena that returns its pages at once, glibc mmaps them (its
dynamic mmap threshold stays under 32 MiB), and a 4 KiB fault costs ~15 us
in this VM (the
profiler showed sqrt, div, fill_ and add at < 1 GB/s). Keeping the pages
(and huge pages for them) leaves none after warm-up: torch.profiler then
shows sqrt 26 ms and div 25 ms a step (0.79 and 0.89 s with glibc) and the
GEMMs (mm, addmm) 1.13 s of a 1.65 s step on one thread. The other knobs are
within the noise or worse, so this script keeps torch.optim.AdamW's and
zero_grad's defaults. torch.set_num_threads does not reach Debian's
OpenBLAS (pthreads): without more, a "one thread" run computes its GEMMs on
every CPU (CPU time above wall time), so this script gives OpenBLAS the same
count, and run_gpt2.sh sets OPENBLAS_NUM_THREADS so that no idle BLAS
threads are even started.

One process times one pass, so its peak resident memory (getrusage: the
whole process) belongs to it alone. Prints one line of key=value pairs, like
bench/bench_resnet.c.
"""
import argparse
import ctypes
import math
import os
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {"gpt2": (12, 768, 12, 50257, 1024), "tiny": (2, 64, 4, 512, 128)}
ENTRIES = {"train_t64": ("train", 64), "train_t128": ("train", 128), "eval_t128": ("eval", 128),
           "embgrad_t128": ("embgrad", 128), "train_t1024": ("train", 1024), "eval_t1024": ("eval", 1024)}


class Conv1D(nn.Module):
    """HF's Conv1D: weight [in, out], x @ weight + bias."""

    def __init__(self, fin, fout, std=0.02):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fin, fout) * std)
        self.bias = nn.Parameter(torch.zeros(fout))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Block(nn.Module):
    def __init__(self, layers, c, heads):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * layers)
        self.heads = heads
        self.ln_1 = nn.LayerNorm(c, eps=1e-5)
        self.c_attn = Conv1D(c, 3 * c)
        self.attn_proj = Conv1D(c, c, proj_std)
        self.ln_2 = nn.LayerNorm(c, eps=1e-5)
        self.c_fc = Conv1D(c, 4 * c)
        self.mlp_proj = Conv1D(4 * c, c, proj_std)

    def attn(self, x):
        b, t, c = x.shape
        hd = c // self.heads
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        s = s.masked_fill(~causal, torch.finfo(s.dtype).min)
        y = (s.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        return self.attn_proj(y)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, layers, c, heads, vocab, positions):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(positions, c)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.h = nn.ModuleList(Block(layers, c, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c, eps=1e-5)

    def logits_from_embeds(self, e):
        x = e + self.wpe.weight[: e.shape[1]]
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()


def lm_loss(logits, idx, mask):
    """HF's GPT2LMHeadModel loss: labels = idx, -100 where mask is 0."""
    labels = idx.masked_fill(mask == 0, -100)[:, 1:]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def set_blas_threads(n):
    """torch.set_num_threads does not reach Debian's OpenBLAS (its pthreads
    build), which runs one thread per CPU unless told: give it the same
    count (a no-op where torch's BLAS is another, e.g. MKL on a GPU host)."""
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(n)
    except (OSError, AttributeError):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", choices=CONFIGS)
    ap.add_argument("entry", choices=ENTRIES)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    # one thread per CPU, as the Lethe side; set explicitly because libgomp
    # can settle on 1 in a container whatever the CPU count
    torch.set_num_threads(a.threads if a.threads > 0 else os.cpu_count())
    set_blas_threads(torch.get_num_threads())
    torch.manual_seed(0)
    layers, c, heads, vocab, positions = CONFIGS[a.config]
    mode, t = ENTRIES[a.entry]
    model = GPT2(layers, c, heads, vocab, positions).to(dev)
    idx = torch.randint(0, vocab, (a.batch, t), device=dev)
    mask = torch.ones(a.batch, t, device=dev)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)

    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = lm_loss(model.logits_from_embeds(model.wte(idx)), idx, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss
    elif mode == "eval":
        model.eval()

        def step():
            with torch.no_grad():
                return lm_loss(model.logits_from_embeds(model.wte(idx)), idx, mask)
    else:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def step():
            e = model.wte(idx).requires_grad_(True)
            (g,) = torch.autograd.grad(lm_loss(model.logits_from_embeds(e), idx, mask), e)
            return g

    for _ in range(a.warmup):
        step()
    sync()
    times, cpu = [], []
    for _ in range(max(a.steps, 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    loss = " loss=%.4f" % out.item() if out.dim() == 0 else ""
    print("entry=%s median_s=%.5f min_s=%.5f max_s=%.5f cpu_min_s=%.5f steps=%d threads=%d peak_rss_mb=%.1f%s "
          "tokens_per_s=%.0f device=%s"
          % (a.entry, statistics.median(times), min(times), max(times), min(cpu), len(times), torch.get_num_threads(),
             rss, loss, a.batch * t / statistics.median(times), a.device))


if __name__ == "__main__":
    main()
