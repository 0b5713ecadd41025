// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// A probe that uses much of what the verifier has to follow in clang's output (bpf crate's
// tests/verifier_probes.rs verifies it; nothing attaches it): hash and array maps, the ring
// buffer (reserve, submit on one path, discard on another, output), globals in .data and
// .rodata, bpf_probe_read_user_str into a record, a byte-wise loop over a stack buffer at a
// variable index, and a bounded loop the compiler keeps (not unrolled).

typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_RINGBUF 27

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
				   __u64 flags) = (void *)2;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *src) = (void *)114;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static void (*bpf_ringbuf_discard)(void *data, __u64 flags) = (void *)133;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size, __u64 flags) =
	(void *)130;
static __u64 (*bpf_get_attach_cookie)(void *ctx) = (void *)174;
static __u64 (*bpf_get_func_ip)(void *ctx) = (void *)173;

struct stats {
	__u64 hits;
	__u64 sum;
	__u8 hist[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct stats);
} by_ip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

struct event {
	__u64 ip;
	__u64 cookie;
	char name[32];
};

__u64 total = 0;
const volatile __u32 sample_mask = 7;

struct pt_regs_min {
	__u64 r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi;
};

SEC("uprobe")
int rich(struct pt_regs_min *ctx)
{
	__u64 ip = bpf_get_func_ip(ctx);
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 arg = ctx->rdi;
	__sync_fetch_and_add(&total, 1);

	struct stats *s = bpf_map_lookup_elem(&by_ip, &ip);
	if (!s) {
		struct stats zero = {};
		bpf_map_update_elem(&by_ip, &ip, &zero, 1);
		s = bpf_map_lookup_elem(&by_ip, &ip);
		if (!s)
			return 0;
	}
	s->hits++;
	s->hist[arg & 15]++;

	// A histogram of the argument's nibbles, in a stack buffer at variable indices.
	__u8 nib[16] = {};
	__u64 v = arg;
#pragma clang loop unroll(disable)
	for (int i = 0; i < 16; i++) {
		nib[v & 15]++;
		v >>= 4;
	}
	__u64 sum = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < 16; i++)
		sum += nib[i] * i;
	s->sum += sum;

	__u32 b = (__u32)(sum & 15);
	__u64 *c = bpf_map_lookup_elem(&buckets, &b);
	if (c)
		__sync_fetch_and_add(c, 1);

	if ((cookie & sample_mask) != 0)
		return 0;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		struct event small = {.ip = ip, .cookie = cookie};
		bpf_ringbuf_output(&events, &small, sizeof(small), 0);
		return 0;
	}
	e->ip = ip;
	e->cookie = cookie;
	if (bpf_probe_read_user_str(e->name, sizeof(e->name), (const void *)arg) < 0) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
