// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// xcover's coverage probe. Attached (as a uprobe-style program) to the entry of every
// function of the target; the attach cookie is the function's index in the session's
// function table.
//
// On each hit: counts[cookie] += 1 in this CPU's slot of a per-CPU array. No other CPU
// writes that slot, so the increment needs no locked instruction (a `lock xadd` costs
// ~7.5 ns here, most of the per-hit budget); a count is lost only if the thread migrates
// between reading its CPU number and the add while another thread hits the same function on
// the old CPU at that instant. Readers sum the slots.
//
// The first hit of a function flips seen[cookie] from 0 to its timestamp (never 0) with a
// compare-and-swap, so exactly one event {cookie, timestamp, tid} goes to the `events` ring
// buffer per function, and the TUI learns about newly covered functions without scanning.
// seen[] keeps the first-hit time for the reports, whoever consumed (or dropped) the event.
// After that, a hit only reads seen[cookie], a line every CPU keeps in its cache. The event's timestamp is
// CLOCK_MONOTONIC_COARSE (the kernel tick's resolution, 1-4 ms, plenty for the TUI's "first
// hit at"): reading it costs ~8 ns against ~40 ns for bpf_ktime_get_ns's rdtsc-based clock,
// a third of a first hit's cost.
//
// Self-contained on purpose (no vmlinux.h, no libbpf headers): the few types, macros and
// helper declarations it needs are below, in the libbpf style. Rebuild the committed
// object with scripts/build-bpf.sh.

typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_RINGBUF 27

// Helpers, by Linux helper id.
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)160;
static __u64 (*bpf_get_attach_cookie)(void *ctx) = (void *)174;

// Sized by xcover at attach time (one entry per function); this is the default.
#define MAX_FUNCS 65536

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_FUNCS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_FUNCS);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

// One first-hit event, as the TUI decodes it (24 bytes, little-endian): struct first_hit
// comes from the probe contract's C header, so the probe and xcover's readers
// (xcover_session::probe::FirstHit) share one layout. The path is relative to this file,
// so no absolute path of the checkout ends up in the object; the header's own line numbers
// only reach the DWARF (.debug_info, .debug_line), never the program, its maps or its BTF.
// session/tests/probe_header.rs checks the header against the Rust struct.
#include "../session/include/xcover_probe.h"

SEC("uprobe")
int xcover_cover(void *ctx)
{
	__u32 key = (__u32)bpf_get_attach_cookie(ctx);
	__u64 *count = bpf_map_lookup_elem(&counts, &key);
	if (!count)
		return 0;
	*count += 1;

	__u64 *first = bpf_map_lookup_elem(&seen, &key);
	if (!first || *first)
		return 0;
	__u64 ts = bpf_ktime_get_coarse_ns() | 1;
	if (__sync_val_compare_and_swap(first, 0, ts) != 0)
		return 0;

	struct first_hit *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->cookie = key;
	e->ts_ns = ts;
	e->tid = (__u32)bpf_get_current_pid_tgid();
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
