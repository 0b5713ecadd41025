// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// A test probe with no map at all (tests/e2e.rs): it only returns. A session with an empty
// map arena must still attach.

#define SEC(name) __attribute__((section(name), used))

SEC("uprobe")
int no_maps(void *ctx)
{
	(void)ctx;
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
