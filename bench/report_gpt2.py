#!/usr/bin/python3
"""report_gpt2.py: the Markdown report of bench/run_gpt2.sh from its raw lines.

    report_gpt2.py RAW

RAW holds the key=value lines of bench_resnet.c, bench_torch_gpt2.py and
peak.c, tagged by run_gpt2.sh ("run <threads> <side> ...", "prof ...", ...).

FLOPs are PERF-ANCHORS': the matmuls as executed, per token of a forward
L (24 C^2 + 4 T C) + 2 C V (the full T x T attention scores); a training
step counts 3 forwards, the input-embedding gradient 2 (forward and the
input-gradient half of the backward), the evaluation 1.

Where the time goes: Lethe's 1-thread kernel profile of the training step
at T = 64, summed by class (GEMMs by role: LM head, MLP, attention
projections, attention scores; AdamW update; the global-norm sums of
gradient clipping; reductions; elementwise; data movement), then by kernel
kind with the slowest kernels.
"""
import collections
import math
import sys

from report import kernel_lines, kv, profile_table, rate_cells  # bench/report.py, beside this file

BATCH = 4
CONFIGS = {"gpt2": (12, 768, 12, 50257), "tiny": (2, 64, 4, 512)}
PASSES = (("train_t64", 64, 3, "training step (AdamW), T = 64"),
          ("train_t128", 128, 3, "training step (AdamW), T = 128"),
          ("eval_t128", 128, 1, "evaluation forward (LM loss), T = 128"),
          ("embgrad_t128", 128, 2, "input-embedding gradient, T = 128"))
# llm.c's train_gpt2.c on the Zen 5 machine of PERF-ANCHORS (seconds per
# step by thread count): a fixed anchor, not run here
LLMC = {("train_t64", 2): 2.810, ("train_t64", 1): 5.214, ("train_t128", 2): 5.847, ("train_t128", 1): 11.270}


def gemm_roles(batch, t, c, vocab):
    """The FLOPs of one GEMM of each role in a step at sequence length t
    (forward and backward GEMMs of a role have the same count, 2 M N K)."""
    bt = batch * t
    roles = []
    for name, f in (("LM head (logits, their input and weight gradients; tied wte)", 2.0 * bt * c * vocab),
                    ("MLP (c_fc, c_proj)", 2.0 * bt * c * 4 * c),
                    ("attention QKV projection (c_attn)", 2.0 * bt * c * 3 * c),
                    ("attention output projection", 2.0 * bt * c * c),
                    ("attention scores and values (QK^T, PV and their gradients)", 2.0 * bt * t * c)):
        # roles of (nearly) equal FLOPs cannot be told apart: one class
        # (the tiny config's T = C = 64 makes the last two equal)
        same = next((i for i, r in enumerate(roles) if abs(f / r[1] - 1.0) <= 0.05), None)
        if same is None:
            roles.append(["GEMM: " + name, f])
        else:
            roles[same][0] += " or " + name
    return roles


# kernel kinds (the name after "kN_") that are reductions or move data
REDUCTIONS = {"sum", "rmax", "rmin", "rlogsumexp", "reductions", "mean", "argmax"}
DATA_MOVEMENT = {"permute", "gather", "scatter_add", "copy", "pad", "concat", "slice", "transpose"}


def time_by_class(kernels, batch, t, c, vocab):
    """Where the time goes, by class: each matmul kernel (also one fused
    into its row-wise consumer) goes to the GEMM role whose FLOP count is
    nearest to its own (its GFLOP/s times its time;
    beyond 15% of every role it is "other").
    The optimizer is the update kernels (one per parameter) and the sums of
    squares that precede them (one per parameter: clip_grad_norm's global
    norm). kernels: (ms, gflops, kind) in the profile's order."""
    roles = gemm_roles(batch, t, c, vocab)
    updates = [i for i, k in enumerate(kernels) if k[2] == "update"]
    clip = set()
    if updates:
        sums = [i for i in range(updates[0]) if kernels[i][2] == "sum"]
        clip = set(sums[-len(updates):]) if len(sums) >= len(updates) else set()
    by = collections.OrderedDict((name, [0.0, 0.0, 0]) for name, _ in roles)   # ms, GFLOP, kernels
    for extra in ("GEMM: other", "AdamW update (fused, one kernel per parameter)",
                  "gradient clipping: sums of squares for the global norm",
                  "reductions (layer norm, softmax, cross entropy, bias gradients)",
                  "elementwise (GELU, residual adds, layer-norm and softmax arithmetic)",
                  "data movement (permute, gather, scatter, copy)"):
        by[extra] = [0.0, 0.0, 0]
    for i, (ms, gflops, kind) in enumerate(kernels):
        work = gflops * ms * 1e-3   # GFLOP
        if kind in ("matmul", "matmul_rows"):   # matmul_rows: a GEMM inside its row-wise consumer (fuse_rows.c)
            name, f = min(roles, key=lambda r: abs(math.log(max(work * 1e9, 1.0) / r[1])))
            cls = name if abs(work * 1e9 / f - 1.0) <= 0.15 else "GEMM: other"
        elif kind == "update":
            cls = "AdamW update (fused, one kernel per parameter)"
        elif i in clip:
            cls = "gradient clipping: sums of squares for the global norm"
        elif kind in REDUCTIONS:
            cls = "reductions (layer norm, softmax, cross entropy, bias gradients)"
        elif kind in DATA_MOVEMENT:
            cls = "data movement (permute, gather, scatter, copy)"
        else:
            cls = "elementwise (GELU, residual adds, layer-norm and softmax arithmetic)"
        by[cls][0] += ms
        by[cls][1] += work
        by[cls][2] += 1
    return by


def class_table(p, entry, prof, t, c, vocab, peak1):
    """The time-by-class table of a profiled step."""
    kernels = []
    for x in prof:
        if x.startswith("K "):
            f = x.split()
            kernels.append((float(f[1]), float(f[4]), f[5].split("_", 1)[1] if "_" in f[5] else f[5]))
    if not kernels:
        return
    total = sum(k[0] for k in kernels)
    head = kv(next((x for x in prof if x.startswith("P ")), ""))
    p("### Where the time goes: %s by kernel class, 1 thread, CPU time per step" % entry)
    p("")
    p("The kernels' minima over the timed steps sum to %.1f ms%s. GEMMs are assigned to a role by their FLOP "
      "count; %% of peak is of the 1-thread FP32 peak (%.0f GFLOP/s)." % (
          total, " of a %.1f ms step" % float(head["step_ms"]) if "step_ms" in head else "", peak1))
    p("")
    p("| class | kernels | ms | share | GFLOP/s (% peak) |")
    p("|---|---|---|---|---|")
    for cls, (ms, work, n) in time_by_class(kernels, BATCH, t, c, vocab).items():
        if n:
            rate = "%.0f (%.0f%%)" % (work / ms * 1e3, 100 * work / ms * 1e3 / peak1) \
                if cls.startswith("GEMM") and ms > 0 and peak1 else "-"
            p("| %s | %d | %.1f | %.1f%% | %s |" % (cls, n, ms, 100 * ms / total, rate))
    p("")


def main():
    info, peaks = {}, {}
    runs = collections.defaultdict(list)   # (threads, side, entry) -> [dict]
    prof = []
    for line in open(sys.argv[1]):
        tag, _, rest = line.rstrip("\n").partition(" ")
        if tag == "peak":
            d = kv(rest)
            peaks[int(d["threads"])] = float(d["peak_gflops"])
        elif tag == "run":
            threads, side, r = rest.split(" ", 2)
            d = kv(r)
            if "entry" in d:
                runs[(threads, side, d["entry"])].append(d)
        elif tag == "prof":
            prof.append(rest)
        else:
            info[tag] = rest
    cfg_words = info.get("config", "gpt2").split()
    cfg = cfg_words[0]
    layers, c, heads, vocab = CONFIGS[cfg]

    def flops(t, forwards):
        return forwards * BATCH * t * (layers * (24.0 * c * c + 4.0 * t * c) + 2.0 * c * vocab)

    out = []
    p = out.append
    p("GPT-2 %s (%d layers, C = %d, %d heads, vocabulary %d), batch %d. Measured %s on %s; %s." % (
        "124M" if cfg == "gpt2" else cfg, layers, c, heads, vocab, BATCH, info.get("date", "?"),
        info.get("host", "?"), " ".join(cfg_words[1:]) or "?"))
    p("Load average before/after: %s / %s. Both sides: %s." % (info.get("load_before", "?"),
                                                              info.get("load_after", "?"), info.get("settings", "?")))
    p("FP32 peak (bench/peak.c): %.0f GFLOP/s on 1 thread, %.0f on 2. tokens/s and GFLOP/s are of the median "
      "step; the ratio is Lethe's tokens/s over PyTorch's (the ratio of best steps: the same for each side's "
      "fastest step; the ceiling: the ratio at 100%% of the peak, PyTorch's time over the FLOPs' time at "
      "peak). llm.c: PERF-ANCHORS' fixed figure on the same kind of machine, not run here."
      % (peaks.get(1, 0), peaks.get(2, 0)))
    p("")
    for threads, title in (("0", "one thread per CPU"), ("1", "one thread each, alternating rounds")):
        nthreads = 2 if threads == "0" else 1
        p("### %s" % title)
        p("")
        p("| pass | Lethe tokens/s | PyTorch tokens/s | ratio | ratio of best steps | ceiling | Lethe GFLOP/s (% peak) "
          "| PyTorch GFLOP/s (% peak) | Lethe peak RSS MiB | PyTorch peak RSS MiB | llm.c s/step (tokens/s) |")
        p("|---|---|---|---|---|---|---|---|---|---|---|")
        for entry, t, forwards, label in PASSES:
            le = sorted(runs.get((threads, "lethe", entry), []), key=lambda d: float(d["median_s"]))
            to = sorted(runs.get((threads, "torch", entry), []), key=lambda d: float(d["median_s"]))
            if not le and not to:
                continue
            if not le or not to:
                p("| %s | (missing: %s) | | | | | | | | | |" % (label, "Lethe" if not le else "PyTorch"))
                continue
            ls, ts = float(le[0]["median_s"]), float(to[0]["median_s"])
            lmin = min(float(d["min_s"]) for d in le)
            tmin = min(float(d["min_s"]) for d in to)
            tokens = BATCH * t
            f = flops(t, forwards)
            pk = peaks.get(nthreads, float("nan"))
            anchor = LLMC.get((entry, nthreads)) if cfg == "gpt2" else None
            p("| %s | %.0f | %.0f | %.2f | %.2f | %s | %.0f | %.0f | %s |" % (
                label, tokens / ls, tokens / ts, ts / ls, tmin / lmin, rate_cells(f, ls, ts, pk),
                float(le[0]["peak_rss_mb"]), float(to[0]["peak_rss_mb"]),
                "%.3f (%.0f)" % (anchor, tokens / anchor) if anchor else "-"))
        p("")
    class_table(p, "train_t64", prof, 64, c, vocab, peaks.get(1, 0.0))
    ks = kernel_lines(prof)
    if ks:
        profile_table(p, "train_t64", ks, len(ks))
    print("\n".join(out))


if __name__ == "__main__":
    main()
