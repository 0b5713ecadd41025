// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// A test probe whose arrays are not sized to the number of hooked functions
// (tests/e2e.rs): `wide` has 1000 entries and counts every hit at key 999 and at key =
// cookie; `narrow` has NARROW entries (1 unless the build says otherwise) and counts at key =
// cookie, so only the functions whose cookie fits have a slot. xcover must keep both sizes.

typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_ARRAY 2

#ifndef NARROW
#define NARROW 1
#endif

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u64 (*bpf_get_attach_cookie)(void *ctx) = (void *)174;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1000);
	__type(key, __u32);
	__type(value, __u64);
} wide SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NARROW);
	__type(key, __u32);
	__type(value, __u64);
} narrow SEC(".maps");

SEC("uprobe")
int map_sizes(void *ctx)
{
	__u32 key = (__u32)bpf_get_attach_cookie(ctx);
	__u32 last = 999;
	__u64 *v = bpf_map_lookup_elem(&wide, &last);
	if (v)
		*v += 1;
	v = bpf_map_lookup_elem(&wide, &key);
	if (v)
		*v += 1;
	v = bpf_map_lookup_elem(&narrow, &key);
	if (v)
		*v += 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
