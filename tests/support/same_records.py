#!/usr/bin/env python3
"""same_records.py MODE DIR_A DIR_B: the end-to-end tests' comparison of two
run folders' records (records/*.json), timings ("seconds") and the program's
path left out. Prints "ok" or what differs.

  equal   the same records, field for field (e2e_gaussian: determinism and
          resume); a difference names its fields
  b_in_a  every record of B is in A and equal (B ran a subset of A's plan)
  a_in_b  every record of A is in B and equal (B ran more than A)
"""
import json
import os
import sys

mode, a, b = sys.argv[1:4]


def load(d):
    out = {}
    for f in sorted(os.listdir(d + "/records")):
        if f.endswith(".json"):
            rec = json.load(open(d + "/records/" + f))
            rec.pop("seconds")
            rec["run"].pop("program")
            out[f] = rec
    return out


ra, rb = load(a), load(b)
if mode == "equal":
    bad = [f + " (" + ",".join(k for k in ra[f] if ra[f][k] != rb.get(f, {}).get(k)) + ")" for f in ra if ra[f] != rb.get(f)]
    bad += [f for f in rb if f not in ra]
    print("ok" if not bad else "differ: " + ", ".join(bad))
else:
    outer, inner = (ra, rb) if mode == "b_in_a" else (rb, ra)
    bad = [f for f in inner if outer.get(f) != inner[f]]
    print("ok" if inner and not bad else "differ: " + ", ".join(bad) if bad else "no records")
