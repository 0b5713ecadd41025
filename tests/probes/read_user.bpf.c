// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// A test probe that reads target memory the fault-safe way (tests/security.rs): on each hit,
// the 8 bytes at the hooked function's entry with bpf_probe_read_user, then 8 bytes at
// address 8 (never mapped), into a destination preset to all ones. `out`:
//   [0] the entry's bytes, [1] that read's result (0),
//   [2] the bad read's result (-EFAULT), [3] its destination afterwards (zeroed).

typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_ARRAY 2

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *src) = (void *)112;
static __u64 (*bpf_get_func_ip)(void *ctx) = (void *)173;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} out SEC(".maps");

static void put(__u32 key, __u64 v)
{
	__u64 *slot = bpf_map_lookup_elem(&out, &key);
	if (slot)
		*slot = v;
}

SEC("uprobe")
int read_user(void *ctx)
{
	__u64 entry = 0;
	long r = bpf_probe_read_user(&entry, sizeof(entry), (const void *)bpf_get_func_ip(ctx));
	put(0, entry);
	put(1, (__u64)r);
	__u64 bad = ~0ull;
	r = bpf_probe_read_user(&bad, sizeof(bad), (const void *)8);
	put(2, (__u64)r);
	put(3, bad);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
