"""The merge-scale figure of scripts/bench.sh: REPORTS reports of FUNCTIONS functions each
(written by bench/genreports.c into a scratch directory, /dev/shm when it has room), merged by
`xcover merge` (release build); prints the wall time, CPU time and peak memory of the merge,
checks the merged hits against the generator's total, and removes the reports.

    python3 bench/merge_scale.py --xcover X --gen GEN --reports 1000 --functions 100000
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xcover", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--reports", type=int, default=1000)
    ap.add_argument("--functions", type=int, default=100000)
    ap.add_argument("--out")
    a = ap.parse_args()
    need = a.reports * a.functions * 80
    base = None
    for cand in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(cand) and shutil.disk_usage(cand).free > need * 1.2:
            base = cand
            break
    if base is None:
        sys.exit(f"merge-scale: no scratch directory with {need / 1e9:.1f} GB free")
    d = tempfile.mkdtemp(prefix="xcover-bench-merge-", dir=base)
    try:
        t0 = time.monotonic()
        total, size = map(int, subprocess.check_output([a.gen, d, str(a.reports), str(a.functions)]).split())
        gen_s = time.monotonic() - t0
        paths = [os.path.join(d, f"r{i}.json") for i in range(a.reports)]
        merged = os.path.join(d, "merged.json")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        p = subprocess.run([a.xcover, "merge", *paths, "-o", merged], capture_output=True, text=True)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            sys.exit(f"merge-scale: xcover merge failed: {p.stderr}")
        with open(merged) as f:
            m = json.load(f)
        got = sum(f["hits"] for f in m["functions"])
        if got != total or len(m["functions"]) != a.functions or m["sessions"] != a.reports:
            sys.exit(f"merge-scale: wrong merge: {got} hits (want {total}), "
                     f"{len(m['functions'])} functions, {m['sessions']} sessions")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        res = {
            "reports": a.reports, "functions": a.functions, "input_bytes": size,
            "merge_wall_s": round(wall, 2), "merge_cpu_s": round(cpu, 2),
            "merge_peak_rss_mib": round(after.ru_maxrss / 1024, 1),
            "input_mb_per_s": round(size / 1e6 / wall, 1),
            "function_entries_per_s": round(a.reports * a.functions / wall),
            "generate_s": round(gen_s, 2), "scratch": base,
        }
        print(f"| merge {a.reports} reports × {a.functions} functions ({size / 1e9:.2f} GB of JSON) "
              f"| {wall:.1f} s wall, {cpu:.1f} s CPU, peak {res['merge_peak_rss_mib']} MiB, "
              f"{res['input_mb_per_s']} MB/s |")
        if a.out:
            with open(a.out, "w") as f:
                json.dump(res, f, indent=2)
                f.write("\n")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
