#!/usr/bin/python3
"""report.py: the Markdown report of bench/run.sh from its raw lines.

    report.py RAW SET_VALUE

RAW holds key=value lines of bench_resnet.c, bench_torch.py and peak.c,
tagged by run.sh ("run <env> <side> ...", "prof <config> ...", ...).
"""
import collections
import re
import sys

BATCH = 128
CRAFT_POISONS = 32   # bench/craft.lth's poison batch


def kv(text):
    return dict(re.findall(r"(\w+)=(\S+)", text))


def rate_cells(flop, lethe_s, torch_s, peak):
    """The "ceiling | Lethe GFLOP/s (% peak) | PyTorch GFLOP/s (% peak)"
    cells of a row: flop of one step, each side's seconds per step, the FP32
    peak in GFLOP/s for the threads used. The ceiling is the ratio Lethe
    would reach at 100% of the peak: PyTorch's time over the FLOPs' time
    there."""
    lg, tg = flop / lethe_s * 1e-9, flop / torch_s * 1e-9
    return "%.2f | %.0f (%.0f%%) | %.0f (%.0f%%)" % (peak / tg, lg, 100 * lg / peak, tg, 100 * tg / peak)


def kernel_lines(lines):
    """(ms, kernel name, what it computes) of each "K " line of a profile."""
    ks = []
    for x in lines:
        if x.startswith("K "):
            f = x.split()
            ks.append((float(f[1]), f[5], x.split("| ", 1)[1] if "| " in x else ""))
    return ks


def profile_table(p, entry, ks, nkernels):
    """Where a step's time goes: per kernel kind, then the slowest kernels."""
    total = sum(k[0] for k in ks)
    p("### Where the time goes: %s, 1 thread, CPU time per step" % entry)
    p("")
    p("Sum of the kernels' minima over the timed steps: %.1f ms (%d kernels)." % (total, nkernels))
    p("")
    p("| kernel kind | ms | share |")
    p("|---|---|---|")
    by = collections.defaultdict(float)
    for ms, name, _ in ks:
        by[name.split("_", 1)[1] if "_" in name else name] += ms
    for kind, ms in sorted(by.items(), key=lambda x: -x[1]):
        if ms >= 0.005 * total:
            p("| %s | %.1f | %.1f%% |" % (kind, ms, 100 * ms / total))
    p("")
    p("Slowest kernels: " + "; ".join("%s %.2f ms (%s)" % (name, ms, what[:60])
                                      for ms, name, what in sorted(ks, key=lambda k: -k[0])[:8]) + ".")
    p("")


def craft_rows(p, runs, peaks, set_value):
    """The crafting step (bench/craft.lth against bench_torch.py's craft
    mode): poisons per second, ratio, ceiling, share of the peak and peak
    RSS, per thread count; each side's best round by median step."""
    envs = [env for env in ("set/0", "set/1") if runs.get((env, "lethe", "craft_w16"))]
    if not envs:
        return
    p("### Crafting: one Witches' Brew step, %d poisons, ResNet-18 width 16 on 1x28x28 (OPENBLAS_CORETYPE=%s)"
      % (CRAFT_POISONS, set_value))
    p("")
    p("The gradient of 1 - cosine(target gradient, poison gradient) over all parameters with respect to the "
      "images (second order; PyTorch: create_graph=True), then signed Adam and the projection.")
    p("")
    p("| threads | Lethe poisons/s | PyTorch poisons/s (NCHW / channels_last) | ratio | ratio of best steps "
      "| ceiling | Lethe GFLOP/s (% peak) | PyTorch GFLOP/s (% peak) | Lethe peak RSS MiB | PyTorch peak RSS MiB |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for env in envs:
        le = sorted(runs[(env, "lethe", "craft_w16")], key=lambda d: float(d["median_s"]))
        to = {}
        for d in runs.get((env, "torch", "craft_w16"), []):
            if d["layout"] not in to or float(d["median_s"]) < float(to[d["layout"]]["median_s"]):
                to[d["layout"]] = d
        threads = le[0].get("threads", env.split("/")[1])
        if not to:
            p("| %s | %.1f | (missing) | | | | | | %.0f | |" % (threads, CRAFT_POISONS / float(le[0]["median_s"]),
                                                                float(le[0]["peak_rss_mb"])))
            continue
        ls = float(le[0]["median_s"])
        ts = {k: float(v["median_s"]) for k, v in to.items()}
        best = min(ts, key=ts.get)
        tmin = min(float(v["min_s"]) for v in runs[(env, "torch", "craft_w16")])
        lmin = min(float(d["min_s"]) for d in le)
        # the step's FLOPs as Lethe's program counts them (bench_craft's
        # gflop=): the same seven convolutions per layer on both sides
        flop = float(le[0].get("gflop", "nan")) * 1e9
        pk = peaks[2] if env.endswith("/0") else peaks[1]
        p("| %s | %.1f | %.1f / %.1f | %.2f | %.2f | %s | %.0f | %.0f |" % (
            threads, CRAFT_POISONS / ls, CRAFT_POISONS / ts.get("nchw", float("nan")),
            CRAFT_POISONS / ts.get("cl", float("nan")), ts[best] / ls, tmin / lmin, rate_cells(flop, ls, ts[best], pk),
            float(le[0]["peak_rss_mb"]), float(to[best]["peak_rss_mb"])))
    p("")


def main():
    raw, set_value = sys.argv[1], sys.argv[2]
    info, peaks, macs = {}, {}, {}
    runs = collections.defaultdict(list)   # (env, side, entry) -> [dict]
    prof = collections.defaultdict(list)   # cfg -> lines
    for line in open(raw):
        line = line.rstrip("\n")
        tag, _, rest = line.partition(" ")
        if tag == "peak":
            d = kv(rest)
            peaks[int(d["threads"])] = float(d["peak_gflops"])
        elif tag == "macs":
            cfg, _, r = rest.partition(" ")
            d = kv(r)
            macs[cfg] = (int(d["macs_per_image"]), int(d["stem_macs_per_image"]))
        elif tag == "run":
            env, side, r = rest.split(" ", 2)
            d = kv(r)
            if "entry" in d:
                runs[(env, side, d["entry"])].append(d)   # env: "<set|unset>/<threads>"
        elif tag == "prof":
            cfg, _, r = rest.partition(" ")
            prof[cfg].append(r)
        else:
            info[tag] = rest
    peak = peaks.get(2, 0.0)

    def flops(mode, cfg):
        m, stem = macs[cfg]
        fwd = 2.0 * m * BATCH
        return {"train": 3 * fwd - 2.0 * stem * BATCH, "eval": fwd, "gus": 2 * fwd}[mode]

    out = []
    p = out.append
    steps = info.get("steps", "? warmup ?").split()
    p("Measured %s on %s; each figure from %s timed steps after %s warm-up." % (
        info.get("date", "?"), info.get("host", "?"), steps[0], steps[-1]))
    p("Load average before/after: %s / %s. Environment: %s." % (info.get("load_before", "?"),
                                                                info.get("load_after", "?"),
                                                                info.get("inherited", "?")))
    p("FP32 peak measured by bench/peak.c (FMA chains, per-thread CPU time): %.0f GFLOP/s on 1 thread, "
      "%.0f on 2; %% of peak below is of the figure for the threads used." % (peaks.get(1, 0), peak))
    p("img/s and GFLOP/s are of the median step; the ratio is Lethe's img/s over PyTorch's faster layout, "
      "the ratio of best steps the same for each side's fastest step (less sensitive to other processes); "
      "the ceiling is the ratio Lethe would reach running the same FLOPs at 100% of the peak "
      "(PyTorch's time over the FLOPs' time at peak: 100% over PyTorch's share of the peak), the most any "
      "lowering of the same arithmetic can give.")
    p("")
    tables = [("set/0", "OPENBLAS_CORETYPE=%s, one thread per CPU" % set_value, ("train", "eval", "gus")),
              ("unset/0", "OPENBLAS_CORETYPE unset, one thread per CPU", ("train", "eval", "gus")),
              ("set/1", "OPENBLAS_CORETYPE=%s, one thread each" % set_value, ("train",))]
    for env, title, modes in tables:
        p("### %s" % title)
        p("")
        rounds = max([len(v) for k, v in runs.items()
                      if k[0] == env and k[1] == "lethe" and k[2].split("_")[0] in modes] or [0])
        if rounds > 1:
            p("%d rounds, alternating the sides; each side's best round (by median step) counts." % rounds)
            p("")
        p("| config | pass | Lethe img/s | PyTorch img/s (NCHW / channels_last) | ratio | ratio of best steps "
          "| ceiling | Lethe GFLOP/s (% peak) | PyTorch GFLOP/s (% peak) | Lethe peak RSS MiB | PyTorch peak RSS MiB |")
        p("|---|---|---|---|---|---|---|---|---|---|---|")
        for cfg, label in (("w64", "w64 3x32x32"), ("w16", "w16 1x28x28")):
            for mode in modes:
                entry = "%s_%s" % (mode, cfg)
                # several rounds (the one-thread rows): each side's best median
                le = sorted(runs.get((env, "lethe", entry), []), key=lambda d: float(d["median_s"]))
                to = {}
                for d in runs.get((env, "torch", entry), []):
                    if d["layout"] not in to or float(d["median_s"]) < float(to[d["layout"]]["median_s"]):
                        to[d["layout"]] = d
                if not le or not to:
                    p("| %s | %s | (missing) | | | | | | | | |" % (label, mode))
                    continue
                ls = float(le[0]["median_s"])
                ts = {k: float(v["median_s"]) for k, v in to.items()}
                best = min(ts, key=ts.get)
                f = flops(mode, cfg)
                pk = peak if env.endswith("/0") else peaks.get(1, peak)
                tmin = min(float(v["min_s"]) for v in runs[(env, "torch", entry)])
                lmin = min(float(d["min_s"]) for d in le)
                p("| %s | %s | %.0f | %.0f / %.0f | %.2f | %.2f | %s | %.0f | %.0f |" % (
                    label, mode, BATCH / ls, BATCH / ts.get("nchw", float("nan")),
                    BATCH / ts.get("cl", float("nan")), ts[best] / ls, tmin / lmin, rate_cells(f, ls, ts[best], pk),
                    float(le[0]["peak_rss_mb"]), float(to[best]["peak_rss_mb"])))
        p("")
    craft_rows(p, runs, peaks, set_value)
    for cfg in ("w16", "w64"):
        lines = prof.get(cfg, [])
        head = [kv(x) for x in lines if x.startswith("P ")]
        ks = kernel_lines(lines)
        if ks:
            profile_table(p, "train_%s" % cfg, ks, int(head[0]["kernels"]) if head else len(ks))
    print("\n".join(out))


if __name__ == "__main__":
    main()
