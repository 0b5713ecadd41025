#!/usr/bin/env python3
"""xcover's benchmark driver, run by scripts/bench.sh (which installs, builds and compiles
first). Measures everything in one run, side by side: xcover and kernel uprobes (bpftrace),
per-call costs, attach/detach times, a real workload, and the TUI's CPU use. Prints a
Markdown table and writes JSON.

Every timing is repeated; min and median are reported (2 shared cores: the machine is noisy).
Nothing here asserts a time: it only reports.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# --------------------------------------------------------------------------------------------
# helpers


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": min(xs), "median": statistics.median(xs), "n": len(xs), "samples": xs}


def fmt(s, key="min", digits=1):
    if s is None:
        return "n/a"
    return f"{s[key]:.{digits}f}"


def fmt_pair(s, digits=1):
    if s is None:
        return "n/a"
    return f"{s['min']:.{digits}f} / {s['median']:.{digits}f}"


def added(a, base):
    """Added cost over the baseline: min-min and median-median."""
    if a is None or base is None:
        return None
    return {"min": a["min"] - base["min"], "median": a["median"] - base["median"]}


class Target:
    """bench/target driven through its stdin/stdout (one command, one answer line)."""

    def __init__(self, path):
        self.p = subprocess.Popen(
            [path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self.p.stdout.readline().strip() == "ready"
        self.pid = self.p.pid

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline().strip()
        try:
            return float(out)
        except ValueError:
            raise RuntimeError(f"target answered {out!r} to {line!r}")

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


ATTACH_RE = re.compile(
    r"(\d+) functions hooked, (\d+) skipped .*discovery ([\d.]+) ms, (?:[^,]*, )?"
    r"target stopped ([\d.]+) ms(?: of which [^,]*)?, attach ([\d.]+) ms"
)
DETACH_RE = re.compile(r"detached from pid \d+ \(target stopped ([\d.]+) ms")


class Xcover:
    def __init__(self, exe):
        self.exe = exe

    def attach(self, pid, *extra, timeout=300):
        t0 = time.monotonic()
        r = subprocess.run(
            [self.exe, "attach", "--no-tui", "--keep", *extra, str(pid)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = (time.monotonic() - t0) * 1e3
        m = ATTACH_RE.search(r.stderr)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"xcover attach failed ({r.returncode}): {r.stderr.strip()}")
        return {
            "hooked": int(m.group(1)),
            "skipped": int(m.group(2)),
            "discovery_ms": float(m.group(3)),
            "stopped_ms": float(m.group(4)),
            "attach_ms": float(m.group(5)),
            "wall_ms": wall,
        }

    def detach(self, pid, timeout=300):
        t0 = time.monotonic()
        r = subprocess.run(
            [self.exe, "detach", str(pid)], capture_output=True, text=True, timeout=timeout
        )
        wall = (time.monotonic() - t0) * 1e3
        m = DETACH_RE.search(r.stderr)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"xcover detach failed ({r.returncode}): {r.stderr.strip()}")
        return {"stopped_ms": float(m.group(1)), "wall_ms": wall}


class Bpftrace:
    """A bpftrace script running in the background, considered attached once its interval
    probe has printed (every uprobe is attached before the interval probe fires)."""

    def __init__(self, script, workdir, attach_timeout):
        self.path = os.path.join(workdir, "probe.bt")
        with open(self.path, "w") as f:
            f.write(script + '\ninterval:ms:200 { printf("tick\\n"); }\n')
        self.out = open(os.path.join(workdir, "bpftrace.out"), "w+")
        env = dict(os.environ, BPFTRACE_MAX_PROBES="200000")
        t0 = time.monotonic()
        self.p = subprocess.Popen(
            ["bpftrace", self.path], stdout=self.out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        self.attach_s = None
        self.error = None
        while time.monotonic() - t0 < attach_timeout:
            if self.p.poll() is not None:
                self.error = f"bpftrace exited: {self.tail()}"
                return
            if "tick" in self.text():
                self.attach_s = time.monotonic() - t0
                return
            time.sleep(0.05)
        self.error = f"bpftrace did not attach within {attach_timeout} s"
        self.stop()

    def text(self):
        self.out.flush()
        with open(self.out.name) as f:
            return f.read()

    def tail(self):
        lines = [l for l in self.text().splitlines() if "RLIMIT_MEMLOCK" not in l]
        return " | ".join(lines[-3:])

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()


def symbols(binary, pattern):
    """(name, address) of the defined function symbols of `binary` matching `pattern`."""
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True).stdout
    res = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT" and re.fullmatch(pattern, parts[2]):
            res.append((parts[2], int(parts[0], 16)))
    return res


def uprobe_list(binary, syms):
    # By address: bpftrace 0.17 resolves each name by scanning the symbol table, which takes
    # minutes for thousands of probes in a binary with 20 000 symbols.
    return ",\n".join(f"uprobe:{binary}:{addr:#x}" for _, addr in syms)


# --------------------------------------------------------------------------------------------
# scenario 1: per-call costs

KINDS = ["push", "nop5", "lea"]
MISS_FIRST = 1000  # miss functions used: miss_<MISS_FIRST> .. (the same ones on both sides)


def micro(a, xc, work):
    """One target process for everything, repeats interleaved (baseline, xcover, uprobes), so
    the three columns share code layout and machine noise."""
    target = os.path.join(a.build, "target")
    n, nk, r, m = a.calls, a.kernel_calls, a.repeats, a.miss
    res = {"calls": n, "kernel_calls": nk, "miss_functions": m, "repeats": r}
    scen = KINDS + ["idle", "miss"]
    base = {k: [] for k in scen}
    xs = {k: [] for k in scen}
    ks = {k: [] for k in scen}
    notes = []
    t = Target(target)
    syms = dict(symbols(target, r"f_\w+"))
    miss_syms = [
        s for s in symbols(target, r"miss_\d+") if MISS_FIRST <= int(s[0][5:]) < MISS_FIRST + m
    ]
    miss = f"miss {m} {MISS_FIRST}"
    t.cmd(miss)  # fault the pages in once, as patching does for xcover
    kernel = not a.no_kernel
    try:
        for rep in range(r):
            log(f"micro: repeat {rep + 1}/{r}: baseline")
            for k in KINDS:
                base[k].append(t.cmd(f"run {k} {n}"))
            base["idle"].append(t.cmd(f"run idle_callee {n}"))
            base["miss"].append(t.cmd(miss))

            # xcover: every function but f_idle hooked. A fresh attach each repeat, so `miss`
            # is a first hit every time; hit figures are each function's second run.
            log(f"micro: repeat {rep + 1}/{r}: xcover")
            st = xc.attach(t.pid, "--exclude", "^f_idle$")
            res["xcover_hooked"] = st["hooked"]
            xs["miss"].append(t.cmd(miss))
            for k in KINDS:
                t.cmd(f"run {k} 1000")
                xs[k].append(t.cmd(f"run {k} {n}"))
            xs["idle"].append(t.cmd(f"run idle_callee {n}"))
            xc.detach(t.pid)

            # Kernel uprobes: a counting program in a per-CPU map, like the probe's hit path.
            if not kernel:
                continue
            for k in KINDS:
                log(f"micro: repeat {rep + 1}/{r}: uprobe on f_{k}")
                bt = Bpftrace(
                    f"uprobe:{target}:{syms['f_' + k]:#x} {{ @hits[cpu] = count(); }}", work, 60
                )
                if bt.error:
                    notes.append(f"uprobe on f_{k}: {bt.error}")
                    continue
                t.cmd(f"run {k} 1000")
                ks[k].append(t.cmd(f"run {k} {nk}"))
                if k == "push":
                    ks["idle"].append(t.cmd(f"run idle_callee {n}"))
                bt.stop()
        # Uprobes on the miss functions: attached once (bpftrace takes seconds to attach and
        # minutes to detach a thousand); the first run is the first hit (a new key in the
        # hash map), the later ones hit existing keys: the kernel's cost barely differs.
        if kernel:
            log(f"micro: uprobes on {m} miss functions")
            bt = Bpftrace(
                uprobe_list(target, miss_syms) + ' { @hits[reg("ip")] = count(); }',
                work,
                a.uprobe_attach_timeout,
            )
            if bt.error:
                notes.append(f"uprobes on {m} functions: {bt.error}")
            else:
                res["kernel_miss_attach_s"] = bt.attach_s
                for _ in range(r):
                    ks["miss"].append(t.cmd(miss))
                t0 = time.monotonic()
                bt.stop()
                res["kernel_miss_detach_s"] = time.monotonic() - t0
    finally:
        t.close()
    if a.no_kernel:
        notes.append("kernel uprobes skipped (--no-kernel or no bpftrace)")
    res["baseline"] = {k: stats(v) for k, v in base.items()}
    res["xcover"] = {k: stats(v) for k, v in xs.items()}
    res["uprobe"] = {k: stats(v) for k, v in ks.items()}
    res["notes"] = sorted(set(notes))
    return res


# --------------------------------------------------------------------------------------------
# scenario 2: attach/detach scaling

SCALE_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
extern unsigned long (*const fn_table[])(unsigned long);
extern const unsigned long fn_count;
int main(void) {
  unsigned long x = 0, i = 0;
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    for (int j = 0; j < 1000; j++) x = fn_table[i++ % fn_count](x);
    usleep(1000);
    if (getppid() == 1) return (int)(x & 0);
  }
}
"""


def scale_asm(n):
    return f"""    .text
    .altmacro
    .macro fn k
    .p2align 4
    .globl sfn_\\k
    .type sfn_\\k, @function
sfn_\\k:
    push %rbp
    mov %rsp, %rbp
    lea 1(%rdi), %rax
    pop %rbp
    ret
    .size sfn_\\k, .-sfn_\\k
    .endm
    .macro ptr k
    .quad sfn_\\k
    .endm
    .set i, 0
    .rept {n}
    fn %i
    .set i, i+1
    .endr
    .section .data.rel.ro,"aw"
    .globl fn_table, fn_count
    .p2align 3
fn_table:
    .set i, 0
    .rept {n}
    ptr %i
    .set i, i+1
    .endr
    .section .rodata
    .p2align 3
fn_count:
    .quad {n}
    .section .note.GNU-stack,"",@progbits
"""


def build_scale_target(work, n):
    d = os.path.join(work, f"scale{n}")
    os.makedirs(d, exist_ok=True)
    exe = os.path.join(d, f"scale{n}")
    with open(os.path.join(d, "main.c"), "w") as f:
        f.write(SCALE_MAIN)
    with open(os.path.join(d, "funcs.S"), "w") as f:
        f.write(scale_asm(n))
    subprocess.run(
        ["cc", "-O2", "-o", exe, os.path.join(d, "main.c"), os.path.join(d, "funcs.S")],
        check=True,
    )
    return exe


def start_scale(exe):
    p = subprocess.Popen([exe], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def scaling(a, xc, work):
    res = []
    for n in a.scale:
        log(f"attach/detach: {n} functions")
        t0 = time.monotonic()
        exe = build_scale_target(work, n)
        compile_s = time.monotonic() - t0
        p = start_scale(exe)
        att, det = [], []
        hooked = None
        try:
            for _ in range(a.scale_repeats):
                st = xc.attach(p.pid, "--include", "^sfn_")
                hooked = st["hooked"]
                att.append(st)
                time.sleep(0.2)
                det.append(xc.detach(p.pid))
        finally:
            p.kill()
            p.wait()
        res.append(
            {
                "functions": n,
                "hooked": hooked,
                "compile_s": compile_s,
                "attach_stopped_ms": stats([x["stopped_ms"] for x in att]),
                "attach_ms": stats([x["attach_ms"] for x in att]),
                "discovery_ms": stats([x["discovery_ms"] for x in att]),
                "attach_wall_ms": stats([x["wall_ms"] for x in att]),
                "detach_stopped_ms": stats([x["stopped_ms"] for x in det]),
                "detach_wall_ms": stats([x["wall_ms"] for x in det]),
            }
        )
    return res


# --------------------------------------------------------------------------------------------
# scenario 3: a real workload


def workload(a, xc, work):
    httpd = os.path.join(a.build, "httpd")
    loadgen = os.path.join(a.build, "loadgen")
    res = {"server": "bench/httpd.c (epoll, keep-alive, -O2 -fno-inline)",
           "connections": a.conns, "seconds": a.load_seconds, "notes": []}

    def start():
        p = subprocess.Popen([httpd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        port = int(p.stdout.readline().split()[1])
        return p, port

    def load(port):
        out = subprocess.run(
            [loadgen, str(port), str(a.conns), str(a.load_seconds)],
            capture_output=True, text=True, timeout=a.load_seconds + 30,
        ).stdout
        m = re.search(r"rps ([\d.]+) errors (\d+)", out)
        return float(m.group(1)) if m and m.group(2) == "0" else None

    def stop(p):
        p.stdin.close()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    funcs = symbols(httpd, r"[A-Za-z_]\w*")
    # Every function symbol of the main executable, minus the C runtime's start-up and
    # tear-down stubs (never called under load; same filter on both sides).
    # bpftrace 0.17 cannot resolve some of the latter by address.
    skip = {"_init", "_fini", "_start", "register_tm_clones", "deregister_tm_clones",
            "__do_global_dtors_aux", "frame_dummy"}
    funcs = [f for f in funcs if f[0] not in skip]
    res["functions"] = len(funcs)
    include = "^(" + "|".join(re.escape(f[0]) for f in funcs) + ")$"
    none, xcv, kern = [], [], []
    p, port = start()
    try:
        for _ in range(a.repeats):
            log("workload: no probe")
            none.append(load(port))
            log("workload: xcover")
            st = xc.attach(p.pid, "--include", include)
            res["xcover_hooked"] = st["hooked"]
            xcv.append(load(port))
            xc.detach(p.pid)
            if not a.no_kernel:
                log("workload: uprobes")
                bt = Bpftrace(
                    uprobe_list(httpd, funcs) + ' { @hits[reg("ip")] = count(); }', work, 120
                )
                if bt.error:
                    res["notes"].append(f"uprobes: {bt.error}")
                else:
                    kern.append(load(port))
                    bt.stop()
    finally:
        stop(p)
    res["rps_none"] = stats(none)
    res["rps_xcover"] = stats(xcv)
    res["rps_uprobe"] = stats(kern)
    return res


# --------------------------------------------------------------------------------------------
# scenario 4: the TUI's CPU use


def clk_tck():
    return os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def tui_cpu(a, xc, work):
    n = a.tui_functions
    if not shutil.which("tmux"):
        return {"error": "tmux not found"}
    exe = build_scale_target(work, n)
    p = start_scale(exe)
    sock = os.path.join(work, "tmux.sock")
    res = {"functions": n, "seconds": a.tui_seconds}
    try:
        subprocess.run(
            ["tmux", "-S", sock, "new-session", "-d", "-x", "160", "-y", "48",
             f"exec {xc.exe} attach {p.pid}"],
            check=True,
        )
        xpid = int(subprocess.run(
            ["tmux", "-S", sock, "display-message", "-p", "#{pane_pid}"],
            capture_output=True, text=True, check=True).stdout.strip())
        # Wait until the session is live (attach done), then let the TUI settle.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = subprocess.run([xc.exe, "status", str(p.pid)], capture_output=True, text=True)
            if ": live" in st.stdout:
                break
            time.sleep(0.2)
        else:
            return {**res, "error": "the TUI session did not go live within 120 s"}
        time.sleep(1.0)
        c0, t0 = cpu_ticks(xpid), time.monotonic()
        time.sleep(a.tui_seconds)
        c1, t1 = cpu_ticks(xpid), time.monotonic()
        res["cpu_percent"] = 100.0 * (c1 - c0) / clk_tck() / (t1 - t0)
        subprocess.run(["tmux", "-S", sock, "send-keys", "q"], check=False)
        for _ in range(100):
            if not os.path.exists(f"/proc/{xpid}"):
                break
            time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)
        if subprocess.run([xc.exe, "status", str(p.pid)], capture_output=True).returncode == 0:
            subprocess.run([xc.exe, "detach", str(p.pid)], capture_output=True)
        p.kill()
        p.wait()
    return res


# --------------------------------------------------------------------------------------------
# output


def markdown(r):
    m = r["micro"]
    out = []
    out.append(f"### Per call (ns; min / median of {m['repeats']} runs; xcover {m['calls']} calls, "
               f"uprobe {m['kernel_calls']} calls; miss: {m['miss_functions']} distinct functions)")
    out.append("")
    out.append("| scenario | baseline | xcover | xcover added | kernel uprobe | uprobe added |")
    out.append("|---|---|---|---|---|---|")
    rows = [("hit, `push %rbp` entry", "push"), ("hit, 5-byte `nop` entry", "nop5"),
            ("hit, `lea` entry (kernel single-steps)", "lea"),
            ("idle (probe on other functions)", "idle"), ("miss (first hit)", "miss")]
    for label, k in rows:
        b, x, u = m["baseline"][k], m["xcover"][k], m["uprobe"][k]
        out.append(f"| {label} | {fmt_pair(b)} | {fmt_pair(x)} | {fmt_pair(added(x, b))} | "
                   f"{fmt_pair(u)} | {fmt_pair(added(u, b))} |")
    for note in m["notes"]:
        out.append(f"\nNote: {note}")
    if "kernel_miss_attach_s" in m:
        out.append(f"\nbpftrace took {m['kernel_miss_attach_s']:.1f} s to attach and "
                   f"{m.get('kernel_miss_detach_s', 0):.1f} s to detach {m['miss_functions']} "
                   f"uprobes; xcover hooked {m['xcover_hooked']} functions (all but f_idle) "
                   f"in each repeat.")
    out.append("")
    out.append("### Attach / detach (ms; min / median)")
    out.append("")
    out.append("| functions | hooked | attach: target stopped | attach (xcover's figure) | "
               "attach wall (incl. discovery) | detach: target stopped | detach wall |")
    out.append("|---|---|---|---|---|---|---|")
    for s in r["scaling"]:
        out.append(f"| {s['functions']} | {s['hooked']} | {fmt_pair(s['attach_stopped_ms'])} | "
                   f"{fmt_pair(s['attach_ms'])} | {fmt_pair(s['attach_wall_ms'], 0)} | "
                   f"{fmt_pair(s['detach_stopped_ms'])} | {fmt_pair(s['detach_wall_ms'], 0)} |")
    w = r.get("workload")
    if w:
        out.append("")
        out.append(f"### Real workload: {w['server']}, {w['functions']} functions hooked, "
                   f"{w['connections']} keep-alive connections, {w['seconds']} s per run")
        out.append("")
        out.append("| probes | requests/s (max / median) | vs none |")
        out.append("|---|---|---|")

        def rps(s):
            return "n/a" if s is None else f"{max(s['samples']):.0f} / {s['median']:.0f}"

        def ratio(s):
            n = w["rps_none"]
            if s is None or n is None:
                return "n/a"
            return f"{100 * s['median'] / n['median']:.1f} %"

        out.append(f"| none | {rps(w['rps_none'])} | 100 % |")
        out.append(f"| xcover | {rps(w['rps_xcover'])} | {ratio(w['rps_xcover'])} |")
        out.append(f"| kernel uprobes (bpftrace) | {rps(w['rps_uprobe'])} | {ratio(w['rps_uprobe'])} |")
        for note in w["notes"]:
            out.append(f"\nNote: {note}")
    t = r.get("tui")
    if t:
        out.append("")
        if "cpu_percent" in t:
            out.append(f"TUI CPU use with {t['functions']} functions hooked: "
                       f"{t['cpu_percent']:.1f} % of one core over {t['seconds']} s.")
        else:
            out.append(f"TUI CPU use: {t.get('error', 'not measured')}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xcover", required=True)
    ap.add_argument("--build", required=True, help="directory with target, httpd, loadgen")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-kernel", action="store_true")
    ap.add_argument("--only", help="comma-separated parts: micro,scaling,workload,tui")
    a = ap.parse_args()
    parts = set((a.only or "micro,scaling,workload,tui").split(","))
    if a.quick:
        a.calls, a.kernel_calls, a.repeats, a.miss = 2_000_000, 50_000, 3, 300
        a.scale, a.scale_repeats = [1000, 10000, 100000], 2
        a.conns, a.load_seconds = 8, 2
        a.tui_functions, a.tui_seconds = 100000, 5
        a.uprobe_attach_timeout = 60
    else:
        a.calls, a.kernel_calls, a.repeats, a.miss = 10_000_000, 200_000, 5, 1000
        a.scale, a.scale_repeats = [1000, 10000, 100000], 5
        a.conns, a.load_seconds = 8, 5
        a.tui_functions, a.tui_seconds = 100000, 10
        a.uprobe_attach_timeout = 180
    if not a.no_kernel and shutil.which("bpftrace") is None:
        log("bpftrace not found: kernel figures skipped")
        a.no_kernel = True
    xc = Xcover(a.xcover)
    work = tempfile.mkdtemp(prefix="xcover-bench-")
    t0 = time.monotonic()
    try:
        r = {
            "meta": {
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "kernel": platform.release(),
                "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                             if l.startswith("model name")), "?"),
                "cores": os.cpu_count(),
                "quick": a.quick,
                "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True).stdout.strip(),
            }
        }
        empty = {"repeats": 0, "calls": 0, "kernel_calls": 0, "miss_functions": 0, "notes": [],
                 **{k: {s: None for s in KINDS + ["idle", "miss"]}
                    for k in ("baseline", "xcover", "uprobe")}}
        r["micro"] = micro(a, xc, work) if "micro" in parts else empty
        r["scaling"] = scaling(a, xc, work) if "scaling" in parts else []
        if "workload" in parts:
            r["workload"] = workload(a, xc, work)
        if "tui" in parts:
            log("TUI CPU")
            r["tui"] = tui_cpu(a, xc, work)
        r["meta"]["bench_seconds"] = time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    md = markdown(r)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(r, f, indent=1)
        f.write("\n")
    log(f"wrote {a.out} ({r['meta']['bench_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
