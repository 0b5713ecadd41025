// SPDX-License-Identifier: GPL-2.0 OR MIT
// Test object for the loader: globals in .data/.rodata/.bss, a bpf-to-bpf call, a hash
// map and a per-CPU array. Rebuilt with scripts/build-bpf.sh.

typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
				   __u64 flags) = (void *)2;
static __u64 (*bpf_get_attach_cookie)(void *ctx) = (void *)174;

struct {
	__uint(type, 1 /* BPF_MAP_TYPE_HASH */);
	__uint(max_entries, 128);
	__type(key, __u64);
	__type(value, __u64);
} seen SEC(".maps");

struct {
	__uint(type, 6 /* BPF_MAP_TYPE_PERCPU_ARRAY */);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

volatile __u64 scale = 3;          // .data
const volatile __u64 offset = 100; // .rodata
__u64 calls;                       // .bss

static __attribute__((noinline)) __u64 transform(__u64 x)
{
	return x * scale + offset;
}

SEC("uprobe/anything")
int globals_prog(void *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 v = transform(cookie);
	__u32 k = 1;
	__u64 *h = bpf_map_lookup_elem(&hits, &k);
	if (h)
		*h += 1;
	__sync_fetch_and_add(&calls, 1);
	bpf_map_update_elem(&seen, &cookie, &v, 0);
	return (int)v;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
