// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// A test probe that loads 8 bytes from address 8 directly, without a helper
// (tests/security.rs). The address is a number, not a pointer: xcover's verifier rejects
// the probe at attach, naming the load's instruction and register (SECURITY.md).

typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_ARRAY 2

static __u64 (*bpf_get_attach_cookie)(void *ctx) = (void *)174;

// Unused; the session needs one map.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unused SEC(".maps");

SEC("uprobe")
int bad_load(void *ctx)
{
	// Address 8, computed at run time so the compiler keeps the load.
	volatile __u64 *p = (volatile __u64 *)(bpf_get_attach_cookie(ctx) * 0 + 8);
	return (int)*p;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
