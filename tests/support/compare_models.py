#!/usr/bin/env python3
"""compare_models.py DIR_A DIR_B: the data-parallel tests' parity check
(tests/mpi.sh, tests/mpi_cuda.sh). Compares DIR/original.safetensors and the
final loss of DIR/original.train.json between two seed folders (one process
against N ranks) and prints "ok ..." when every tensor agrees within 1e-5 of
its scale and the losses within 1e-5 relative, otherwise the difference.
Standard library only: the test machine needs no numpy."""
import array
import json
import struct
import sys


def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    out = {}
    for k, v in head.items():
        if k != "__metadata__":
            s, e = v["data_offsets"]
            out[k] = array.array({"F32": "f", "F64": "d"}[v["dtype"]], b[8 + n + s:8 + n + e])
    return out


a, b = (tensors(d + "/original.safetensors") for d in sys.argv[1:3])
if sorted(a) != sorted(b):
    print("different tensors:", sorted(a), sorted(b))
    sys.exit()
worst = 0.0
for k in a:
    scale = max(abs(x) for x in a[k])
    diff = max(abs(x - y) for x, y in zip(a[k], b[k]))
    worst = max(worst, diff / (scale + 1e-12))
la, lb = (json.load(open(d + "/original.train.json"))["final_loss"] for d in sys.argv[1:3])
ok = worst < 1e-5 and abs(la - lb) < 1e-5 * abs(la)
print("ok" if ok else "", "largest difference %.2g of the tensor scale, final loss %.9g vs %.9g" % (worst, la, lb))
