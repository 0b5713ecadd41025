#!/usr/bin/env python3
"""A/B of first-hit and steady-hit costs for several xcover binaries (or probes), interleaved
in one bench/target process so they share code layout and machine noise:

    python3 bench/ab_firsthit.py BUILD_DIR REPEATS FUNCS name=XCOVER[;ATTACH_ARG...] ...

e.g. `python3 bench/ab_firsthit.py /tmp/bw 40 300 before=/tmp/xcover.old after=target/release/xcover`
(BUILD_DIR holds `target`, built as in scripts/bench.sh). Each repeat: baseline `miss` and
`run push`, then per variant: attach (default `--exclude ^f_idle$`), `miss FUNCS 1000` (first
hits), the same again (second hits), `run push` (steady hits), detach. Prints min / median
of the added ns per call."""
import importlib.util
import os
import statistics
import sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("driver", os.path.join(here, "driver.py"))
d = importlib.util.module_from_spec(spec)
spec.loader.exec_module(d)
build, R, M = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vs = []
for a in sys.argv[4:]:
    name, rest = a.split("=", 1)
    exe, *extra = rest.split(";")
    vs.append((name, d.Xcover(exe), extra or ["--exclude", "^f_idle$"]))
t = d.Target(os.path.join(build, "target"))
miss = f"miss {M} 1000"
t.cmd(miss)
res = {n: {"first": [], "second": [], "hit": []} for n, _, _ in vs}
base, bh = [], []
try:
    for r in range(R):
        base.append(t.cmd(miss))
        bh.append(t.cmd("run push 2000000"))
        for n, xc, extra in vs:
            xc.attach(t.pid, *extra)
            res[n]["first"].append(t.cmd(miss))
            res[n]["second"].append(t.cmd(miss))
            t.cmd("run push 1000")
            res[n]["hit"].append(t.cmd("run push 2000000"))
            xc.detach(t.pid)
finally:
    t.close()


def mm(xs):
    return min(xs), statistics.median(xs)


bm, bmed = mm(base)
hm, hmed = mm(bh)
print(f"baseline miss {bm:.1f}/{bmed:.1f}  hit {hm:.1f}/{hmed:.1f}   "
      f"(R={R}, M={M}; added = min-min / med-med)")
for n, _, _ in vs:
    f, s, h = mm(res[n]["first"]), mm(res[n]["second"]), mm(res[n]["hit"])
    print(f"{n:10s} first +{f[0]-bm:6.1f} / +{f[1]-bmed:6.1f}   "
          f"second +{s[0]-bm:5.1f} / +{s[1]-bmed:5.1f}   hit +{h[0]-hm:5.1f} / +{h[1]-hmed:5.1f}")
