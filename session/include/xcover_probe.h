// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// xcover's probe contract, C side: the records a probe writes for xcover to read. The Rust
// side is the `xcover-session` crate's `probe` module (`xcover_session::probe`), which also
// names the maps xcover looks for: `counts` (PERCPU_ARRAY, u32 cookie -> u64 hits), `seen`
// (ARRAY, u32 cookie -> u32 flag) and `events` (RINGBUF of struct first_hit).
// session/tests/probe_header.rs compiles this header and checks every field's offset and
// size against the Rust struct.
//
// Needs __u32 and __u64 (from <linux/types.h>, or the probe's own typedefs).

#ifndef XCOVER_PROBE_H
#define XCOVER_PROBE_H

// One first-hit event in the `events` ring buffer (24 bytes, the target's byte order:
// little-endian): xcover_session::probe::FirstHit.
struct first_hit {
	__u64 cookie;	// the function's index in the session's function table
	__u64 ts_ns;	// CLOCK_MONOTONIC_COARSE when it was first hit
	__u32 tid;	// the thread that hit it
	__u32 _pad;	// zero
};

#endif // XCOVER_PROBE_H
