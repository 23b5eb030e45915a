#!/usr/bin/python3
"""report_gpt2.py: the Markdown report of bench/run_gpt2.sh from its raw lines.

    report_gpt2.py RAW

RAW holds the key=value lines of bench_resnet.c, bench_torch_gpt2.py and
peak.c, tagged by run_gpt2.sh ("run <threads> <side> ...", "prof ...", ...).

FLOPs are PERF-ANCHORS': the matmuls as executed, per token of a forward
L (24 C^2 + 4 T C) + 2 C V (the full T x T attention scores); a training
step counts 3 forwards, the input-embedding gradient 2 (forward and the
input-gradient half of the backward), the evaluation 1.
"""
import collections
import re
import sys

from report import kernel_lines, profile_table  # bench/report.py, beside this file

BATCH = 4
CONFIGS = {"gpt2": (12, 768, 12, 50257), "tiny": (2, 64, 4, 512)}
PASSES = (("train_t64", 64, 3, "training step (AdamW), T = 64"),
          ("train_t128", 128, 3, "training step (AdamW), T = 128"),
          ("eval_t128", 128, 1, "evaluation forward (LM loss), T = 128"),
          ("embgrad_t128", 128, 2, "input-embedding gradient, T = 128"))
# llm.c's train_gpt2.c on the Zen 5 machine of PERF-ANCHORS (seconds per
# step by thread count): a fixed anchor, not run here
LLMC = {("train_t64", 2): 2.810, ("train_t64", 1): 5.214, ("train_t128", 2): 5.847, ("train_t128", 1): 11.270}


def kv(text):
    return dict(re.findall(r"(\w+)=(\S+)", text))


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
      "fastest step). llm.c: PERF-ANCHORS' fixed figure on the same kind of machine, not run here."
      % (peaks.get(1, 0), peaks.get(2, 0)))
    p("")
    for threads, title in (("0", "one thread per CPU"), ("1", "one thread each, alternating rounds")):
        nthreads = 2 if threads == "0" else 1
        p("### %s" % title)
        p("")
        p("| pass | Lethe tokens/s | PyTorch tokens/s | ratio | ratio of best steps | Lethe GFLOP/s (% peak) "
          "| PyTorch GFLOP/s (% peak) | Lethe peak RSS MiB | PyTorch peak RSS MiB | llm.c s/step (tokens/s) |")
        p("|---|---|---|---|---|---|---|---|---|---|")
        for entry, t, forwards, label in PASSES:
            le = sorted(runs.get((threads, "lethe", entry), []), key=lambda d: float(d["median_s"]))
            to = sorted(runs.get((threads, "torch", entry), []), key=lambda d: float(d["median_s"]))
            if not le and not to:
                continue
            if not le or not to:
                p("| %s | (missing: %s) | | | | | | | | |" % (label, "Lethe" if not le else "PyTorch"))
                continue
            ls, ts = float(le[0]["median_s"]), float(to[0]["median_s"])
            lmin = min(float(d["min_s"]) for d in le)
            tmin = min(float(d["min_s"]) for d in to)
            tokens = BATCH * t
            f = flops(t, forwards)
            pk = peaks.get(nthreads, float("nan"))
            anchor = LLMC.get((entry, nthreads)) if cfg == "gpt2" else None
            p("| %s | %.0f | %.0f | %.2f | %.2f | %.0f (%.0f%%) | %.0f (%.0f%%) | %.0f | %.0f | %s |" % (
                label, tokens / ls, tokens / ts, ts / ls, tmin / lmin, f / ls / 1e9, 100 * f / ls / 1e9 / pk,
                f / ts / 1e9, 100 * f / ts / 1e9 / pk, float(le[0]["peak_rss_mb"]), float(to[0]["peak_rss_mb"]),
                "%.3f (%.0f)" % (anchor, tokens / anchor) if anchor else "-"))
        p("")
    ks = kernel_lines(prof)
    if ks:
        profile_table(p, "train_t64", ks, len(ks))
    print("\n".join(out))


if __name__ == "__main__":
    main()
