// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// A test probe that asks for the time on every hit, so that a thread of a busy target is
// often inside the vDSO's clock_gettime, called from the JIT-ed probe, when xcover stops it
// (tests/faults.rs). Counts hits like the coverage probe and keeps the last time seen.

typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_attach_cookie)(void *ctx) = (void *)174;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_ns SEC(".maps");

SEC("uprobe")
int ktime_every_hit(void *ctx)
{
	__u32 key = (__u32)bpf_get_attach_cookie(ctx);
	__u64 *count = bpf_map_lookup_elem(&counts, &key);
	if (!count)
		return 0;
	*count += 1;
	__u32 zero = 0;
	__u64 *t = bpf_map_lookup_elem(&last_ns, &zero);
	if (t)
		*t = bpf_ktime_get_ns();
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
