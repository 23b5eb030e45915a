#!/usr/bin/python3
"""Writes the PyTorch parity references of tests/unit/test_parity.c.

    /usr/bin/python3 tests/reference/make_reference.py      (Debian's python3-torch)

For each configuration below it builds the kuangliu/pytorch-cifar ResNet-18
(with a width argument; torch defaults otherwise), sets every parameter,
buffer, input and label from the closed-form formula that the C test also
implements (so nothing of the model is stored), computes in float64:

  logits, loss, d loss / d x and d loss / d p for every parameter p, in train
  mode (batch statistics), at the initial state;
  eval-mode logits (running statistics) at the initial state;
  3 steps of torch.optim.SGD(lr, momentum, weight_decay) in train mode: the
  loss of each step, the parameter change p3 - p0, the running statistics
  after the steps, and eval-mode logits after the steps;

and writes them to tests/reference/<config>.safetensors (layout in README.md).
Small tensors are stored whole; parameter tensors larger than K elements are
stored as K values at formula positions, plus the L2 norm and the max-abs of
the whole tensor. The same run in float32 is compared with the float64 result
and its errors are printed and kept in the metadata (what PyTorch itself
achieves in f32).

The input batch has a seed: the first one (0, 1, ...) for which every ReLU
input of the train-mode forward pass at the initial state is at least MARGIN
times that ReLU's rms away from 0 (computed in float64). A ReLU input within
f32 rounding of 0 may flip its gradient mask in an f32 run, which moves the
gradient of a batch-norm shift of a small batch by ~1e-3: the margin keeps
the f32 gradient checks of the C test clear of that.

The formulas (the C test must agree bit for bit; see README.md):

  lowbias32(x): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b;
                x ^= x >> 16                                  (uint32 arithmetic)
  fnv1a32(s):   FNV-1a, 32 bits, over the UTF-8 bytes of s
  key(name)   = lowbias32(fnv1a32(name))
  s(name, i)  = (2 * (lowbias32(lowbias32(i) ^ key(name)) >> 8) + 1 - 2^24) / 2^24
                an odd multiple of 2^-24 in (-1, 1), exact in f32
  value of element i (row-major) of the tensor at path P, in float64 and then
  rounded to float32 (round to nearest even):
      P ends in ".gamma"  1 + 0.25 s        P ends in ".beta"  0.1 s
      P ends in ".mean"   0.1 s             P ends in ".var"   1 + 0.5 s
      rank >= 2           sqrt(3 / fan_in) s, fan_in = numel / shape[0]
      other (biases)      0.1 s
  input x:  s("input.x.<seed>", i);   label n:  lowbias32(lowbias32(n) ^ key("input.y")) % classes
  sampled positions of a tensor of n > K elements, j = 0..K-1:
      lo = j n / K, hi = (j + 1) n / K (integer division),
      pos_j = lo + lowbias32(j ^ key2) % (hi - lo),  key2 = lowbias32(key(P) ^ 0x9e3779b9)
"""
import json
import math
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
K = 512                 # samples per large parameter tensor
STEPS = 3
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
FORMAT = "lethe-parity-1"
MARGIN = 1e-6           # smallest |ReLU input| / rms at the initial state (see find_seed)
MAX_SEEDS = 200

# name, width, channels, height (= width in pixels), batch, classes: the
# Fashion-MNIST model of the experiments and the CIFAR-10 one
CONFIGS = [
    ("resnet18_w16_c1_28", 16, 1, 28, 8, 10),
    ("resnet18_w64_c3_32", 64, 3, 32, 4, 10),
]

M32 = 0xFFFFFFFF


# ---------------------------------------------------------------- formulas
def lowbias32(x):
    """x: np.uint32 array or Python int"""
    if isinstance(x, int):
        x &= M32
        x ^= x >> 16
        x = (x * 0x7FEB352D) & M32
        x ^= x >> 15
        x = (x * 0x846CA68B) & M32
        x ^= x >> 16
        return x
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def fnv1a32(s):
    h = 0x811C9DC5
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & M32
    return h


def key(name):
    return lowbias32(fnv1a32(name))


def unit(name, n):
    """s(name, i) for i < n, float64"""
    i = np.arange(n, dtype=np.uint32)
    h = lowbias32(lowbias32(i) ^ np.uint32(key(name)))
    return ((h >> np.uint32(8)).astype(np.int64) * 2 + 1 - 2**24).astype(np.float64) * 2.0**-24


def tensor_value(path, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    s = unit(path, n)
    if path.endswith(".gamma"):
        v = 1.0 + 0.25 * s
    elif path.endswith(".beta") or path.endswith(".mean"):
        v = 0.1 * s
    elif path.endswith(".var"):
        v = 1.0 + 0.5 * s
    elif len(shape) >= 2:
        v = math.sqrt(3.0 / (n // shape[0])) * s
    else:
        v = 0.1 * s
    return v.astype(np.float32).reshape(shape)


def input_x(shape, seed):
    return unit("input.x.%d" % seed, int(np.prod(shape))).astype(np.float32).reshape(shape)


def labels(n, classes):
    k = key("input.y")
    return np.array([lowbias32(lowbias32(j) ^ k) % classes for j in range(n)], dtype=np.int64)


def positions(path, n):
    if n <= K:
        return np.arange(n)
    k2 = lowbias32(key(path) ^ 0x9E3779B9)
    out = []
    for j in range(K):
        lo, hi = j * n // K, (j + 1) * n // K
        out.append(lo + lowbias32(j ^ k2) % (hi - lo))
    return np.array(out)


# ---------------------------------------------------------------- the model
def build_model(width, channels, classes, relu=None):
    import torch.nn as nn
    import torch.nn.functional as F
    relu = relu or F.relu

    class BasicBlock(nn.Module):   # kuangliu/pytorch-cifar models/resnet.py
        expansion = 1

        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != self.expansion * planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(self.expansion * planes))

        def forward(self, x):
            out = relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += self.shortcut(x)
            return relu(out)

    class ResNet(nn.Module):
        def __init__(self, num_blocks, num_classes, width, channels):
            super().__init__()
            self.in_planes = width
            self.conv1 = nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
            self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
            self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
            self.layer4 = self._make_layer(8 * width, num_blocks[3], stride=2)
            self.linear = nn.Linear(8 * width, num_classes)

        def _make_layer(self, planes, n, stride):
            layers = []
            for s in [stride] + [1] * (n - 1):
                layers.append(BasicBlock(self.in_planes, planes, s))
                self.in_planes = planes
            return nn.Sequential(*layers)

        def forward(self, x):
            out = relu(self.bn1(self.conv1(x)))
            out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
            # kuangliu: avg_pool2d(out, 4); the last stage is 4x4 for 32x32 and 28x28
            assert out.shape[2:] == (4, 4), out.shape
            out = F.avg_pool2d(out, 4)
            return self.linear(out.view(out.size(0), -1))

    return ResNet([2, 2, 2, 2], classes, width, channels)


def lethe_path(torch_name):
    """torch state_dict name -> Lethe path (graphs/models/resnet18.lth), None if not a tensor there"""
    parts = torch_name.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    if parts[0] == "linear":
        return "fc." + {"weight": "w", "bias": "b"}[parts[1]]
    bn_leaf = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"}
    if parts[0] in ("conv1", "bn1"):
        prefix, rest = "stem", parts
    else:   # layerL.B.(conv1|bn1|conv2|bn2|shortcut.0|shortcut.1).leaf
        prefix = parts[0] + "." + parts[1]
        rest = parts[2:]
        if rest[0] == "shortcut":
            rest = ["conv1" if rest[1] == "0" else "bn1"] + rest[2:]
            prefix += ".skip"
        elif rest[0] in ("conv1", "bn1"):
            prefix += ".a"
        else:
            prefix += ".b"
    if rest[0].startswith("conv"):
        assert rest[1] == "weight"
        return prefix + ".w"
    return prefix + ".bn." + bn_leaf[rest[1]]


# ---------------------------------------------------------------- reference runs
def fresh_model(cfg, dtype, relu=None):
    import torch
    name, width, channels, hw, batch, classes = cfg
    m = build_model(width, channels, classes, relu).to(dtype)
    with torch.no_grad():
        for tn, t in list(m.named_parameters()) + list(m.named_buffers()):
            p = lethe_path(tn)
            if p is not None:
                t.copy_(torch.from_numpy(tensor_value(p, tuple(t.shape))).to(dtype))
    return m


def kink_margin(cfg, seed):
    """min over every ReLU input z of the train-mode forward at the initial
    state of |z| / rms(z of that ReLU), in float64"""
    import torch
    import torch.nn.functional as F
    name, width, channels, hw, batch, classes = cfg
    margin = [math.inf]

    def relu(z):
        margin[0] = min(margin[0], (z.abs().min() / z.pow(2).mean().sqrt()).item())
        return F.relu(z)

    m = fresh_model(cfg, torch.float64, relu).train()
    with torch.no_grad():
        m(torch.from_numpy(input_x((batch, channels, hw, hw), seed)).double())
    return margin[0]


def find_seed(cfg):
    """the first input seed whose kink margin is at least MARGIN"""
    best = (-1.0, 0)
    for seed in range(MAX_SEEDS):
        mg = kink_margin(cfg, seed)
        best = max(best, (mg, seed))
        if mg >= MARGIN:
            return seed, mg
    print("  no seed below %d reaches a kink margin of %g; using the best, %d (%.2g)" % (MAX_SEEDS, MARGIN, best[1],
                                                                                      best[0]))
    return best[1], best[0]


def run(cfg, dtype, seed):
    import torch
    import torch.nn.functional as F

    name, width, channels, hw, batch, classes = cfg
    x0 = torch.from_numpy(input_x((batch, channels, hw, hw), seed)).to(dtype)
    y = torch.from_numpy(labels(batch, classes))
    fresh = lambda: fresh_model(cfg, dtype)

    r = {}
    # train-mode forward and backward at the initial state
    m = fresh().train()
    x = x0.clone().requires_grad_(True)
    logits = m(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    r["logits"] = logits.detach().double().numpy()
    r["loss"] = np.array(loss.item())
    r["grad_x"] = x.grad.double().numpy()
    r["params"] = [(lethe_path(tn), t.detach().double().numpy().copy()) for tn, t in m.named_parameters()]
    r["grad"] = {lethe_path(tn): t.grad.double().numpy() for tn, t in m.named_parameters()}
    r["buffers0"] = [(lethe_path(tn), t.double().numpy().copy()) for tn, t in fresh().named_buffers()
                     if lethe_path(tn) is not None]

    # eval-mode logits at the initial state
    m = fresh().eval()
    with torch.no_grad():
        r["eval_logits"] = m(x0).double().numpy()

    # SGD with momentum
    m = fresh().train()
    p0 = {lethe_path(tn): t.detach().clone() for tn, t in m.named_parameters()}
    opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(m(x0), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    r["step_loss"] = np.array(losses)
    r["delta"] = {lethe_path(tn): (t.detach() - p0[lethe_path(tn)]).double().numpy() for tn, t in m.named_parameters()}
    r["buffers"] = {lethe_path(tn): t.double().numpy().copy() for tn, t in m.named_buffers() if lethe_path(tn) is not None}
    m.eval()
    with torch.no_grad():
        r["eval_logits_after"] = m(x0).double().numpy()
    return r


def rel(a, b):
    """the test's error measure: max |a - b| / max |b|"""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def compare(r32, r64):
    out = {}
    for k in ("logits", "loss", "grad_x", "eval_logits", "step_loss", "eval_logits_after"):
        out[k] = rel(r32[k], r64[k])
    out["grad"] = max(rel(r32["grad"][p], r64["grad"][p]) for p in r64["grad"])
    out["delta"] = max(rel(r32["delta"][p], r64["delta"][p]) for p in r64["delta"])
    out["buffers"] = max(rel(r32["buffers"][p], r64["buffers"][p]) for p in r64["buffers"])
    return out


# ---------------------------------------------------------------- safetensors
def write_safetensors(path, tensors, meta):
    """tensors: list of (name, np.ndarray of float32/float64/int32); laid out as
    runtime/safetensors.h writes: header order as given, data by decreasing
    element size, header padded with spaces to a multiple of 8"""
    codes = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
    order = sorted(range(len(tensors)), key=lambda i: -tensors[i][1].dtype.itemsize)
    offsets, blobs, off = {}, [], 0
    for i in order:
        b = np.ascontiguousarray(tensors[i][1]).astype(tensors[i][1].dtype.newbyteorder("<")).tobytes()
        offsets[i] = (off, off + len(b))
        blobs.append(b)
        off += len(b)
    header = {"__metadata__": meta}
    for i, (n, a) in enumerate(tensors):
        header[n] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": list(offsets[i])}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def make(cfg):
    import torch
    name, width, channels, hw, batch, classes = cfg
    seed, margin = find_seed(cfg)
    r64 = run(cfg, torch.float64, seed)
    r32 = run(cfg, torch.float32, seed)
    f32err = compare(r32, r64)
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    t = [("logits", f32(r64["logits"])), ("loss", np.asarray(r64["loss"], dtype=np.float64)),
         ("grad_x", f32(r64["grad_x"])), ("eval_logits", f32(r64["eval_logits"])),
         ("step_loss", r64["step_loss"].astype(np.float64)), ("eval_logits_after", f32(r64["eval_logits_after"]))]
    x, y = input_x((batch, channels, hw, hw), seed).astype(np.float64).reshape(-1), labels(batch, classes).astype(np.float64)
    t.append(("stats/input.x", np.array([x.sum(), (x * x).sum()])))
    t.append(("stats/input.y", np.array([y.sum(), (y * y).sum()])))
    for p, v in r64["params"]:
        flat = v.reshape(-1)
        pos = positions(p, flat.size)
        g, d = r64["grad"][p].reshape(-1), r64["delta"][p].reshape(-1)
        t.append(("grad/" + p, f32(g[pos])))
        t.append(("delta/" + p, f32(d[pos])))
        # init sum and sum of squares (the C side checks its formula with them),
        # L2 norm and max-abs of the gradient and of p3 - p0 over the whole tensor
        t.append(("stats/" + p, np.array([flat.sum(), (flat * flat).sum(), np.linalg.norm(g), np.abs(g).max(),
                                          np.linalg.norm(d), np.abs(d).max()], dtype=np.float64)))
    for p, v in r64["buffers0"]:
        flat = v.reshape(-1)
        t.append(("buffer/" + p, f32(r64["buffers"][p])))
        t.append(("stats/" + p, np.array([flat.sum(), (flat * flat).sum()], dtype=np.float64)))
    meta = {
        "format": FORMAT, "model": "ResNet18", "width": str(width), "channels": str(channels),
        "height": str(hw), "batch": str(batch), "classes": str(classes), "steps": str(STEPS),
        "seed": str(seed), "kink_margin": "%.3g" % margin, "lr": repr(LR), "momentum": repr(MOMENTUM), "wd": repr(WD), "samples": str(K),
        "params": ",".join(p for p, _ in r64["params"]),
        "buffers": ",".join(p for p, _ in r64["buffers0"]),
        "reference": "torch %s float64, kuangliu/pytorch-cifar ResNet-18" % torch.__version__,
        "torch_f32_error": json.dumps({k: float("%.3g" % v) for k, v in f32err.items()}, separators=(",", ":")),
    }
    path = os.path.join(HERE, name + ".safetensors")
    write_safetensors(path, t, meta)
    print("%s: %d bytes, seed %d (kink margin %.2g), loss %.6f, step losses %s" % (
        os.path.relpath(path), os.path.getsize(path), seed, margin, r64["loss"],
        " ".join("%.6f" % v for v in r64["step_loss"])))
    print("  torch f32 vs f64 (max |a-b| / max |b|):",
          " ".join("%s %.2g" % (k, v) for k, v in f32err.items()))


def main():
    try:
        import torch
    except ImportError:
        sys.exit("make_reference.py needs PyTorch: run it with Debian's /usr/bin/python3 (apt-get install python3-torch)")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    for cfg in CONFIGS:
        make(cfg)


if __name__ == "__main__":
    main()
