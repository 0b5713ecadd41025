//! Branches from elsewhere in a module into the first bytes of its functions.
//!
//! An entry patch overwrites a function's first instructions. The planner (in the target)
//! sees the branches of the function itself into those bytes, but not those of other code:
//! glibc's `__mempcpy_*_unaligned_erms` ends in `jmp __memcpy_*_unaligned_erms+3`, and a
//! patched `__memcpy_*` makes the next `mempcpy` run half a `jmp`. This module finds, once
//! per module and before anything is planned, every direct branch of the module's code
//! (`jmp`, `jcc`, `call`, `loop`/`jrcxz`, `xbegin`) whose target lies in bytes `1..=`[`SPAN`]
//! of a function and whose source lies outside that function; the agent then refuses every
//! patch form that displaces such a byte.
//!
//! The module's executable sections are decoded linearly from the file's bytes, starting
//! again at every symbol, so that data in a gap cannot desynchronise the rest; each run of
//! code between two symbols is decoded on its own, bounded by the next symbol. Two threads
//! share a big module. Indirect branches (through registers, memory, tables) are not seen.

use goblin::elf::{Elf, program_header::PF_X, program_header::PT_LOAD, section_header};
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

/// Offsets `1..=SPAN` of a function are tracked: an entry patch displaces at most 19 bytes.
pub const SPAN: u64 = 20;

/// Modules with less code than this are scanned by one thread.
const SPLIT_BYTES: usize = 256 * 1024;

/// Where another function's branch enters a function inside its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The lowest offset from the function's entry (`1..=SPAN`) that such a branch targets.
    pub at: u8,
    /// Link-time address of the first instruction (lowest address) that branches there.
    pub from: u64,
}

/// A function as the scan sees it (link-time addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Func {
    /// Entry.
    pub start: u64,
    /// Size from the symbol: branches from `start..start+size` are the function's own.
    pub size: u64,
    /// Where the next symbol (or the section) starts: a patch never covers bytes past it.
    pub next: u64,
}

/// A run of executable bytes of the file at a link-time address.
#[derive(Clone, Copy, Debug)]
pub struct Code<'a> {
    /// Link-time address of `bytes[0]`.
    pub vaddr: u64,
    /// The bytes, from the file.
    pub bytes: &'a [u8],
}

/// The executable code of an ELF file: its `SHF_EXECINSTR` sections, or its executable
/// `PT_LOAD` segments when it has no section headers.
pub fn code_ranges<'a>(elf: &Elf, bytes: &'a [u8]) -> Vec<Code<'a>> {
    let slice = |off: u64, len: u64| {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        bytes.get(start..end)
    };
    let mut out: Vec<Code<'a>> = elf
        .section_headers
        .iter()
        .filter(|s| {
            s.sh_flags & u64::from(section_header::SHF_EXECINSTR) != 0
                && s.sh_flags & u64::from(section_header::SHF_ALLOC) != 0
                && s.sh_type != section_header::SHT_NOBITS
                && s.sh_size > 0
        })
        .filter_map(|s| {
            Some(Code {
                vaddr: s.sh_addr,
                bytes: slice(s.sh_offset, s.sh_size)?,
            })
        })
        .collect();
    if out.is_empty() {
        out = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD && p.p_flags & PF_X != 0 && p.p_filesz > 0)
            .filter_map(|p| {
                Some(Code {
                    vaddr: p.p_vaddr,
                    bytes: slice(p.p_offset, p.p_filesz)?,
                })
            })
            .collect();
    }
    out.sort_by_key(|c| c.vaddr);
    out
}

/// For each of `funcs` (best sorted by `start`), the lowest offset in its first
/// bytes that a branch from outside it targets, found by decoding `code` and starting again
/// at each of `resync` (sorted symbol addresses; function starts are added).
pub fn scan(code: &[Code<'_>], resync: &[u64], funcs: &[Func]) -> Vec<Option<Inbound>> {
    let mut out = vec![None; funcs.len()];
    if funcs.is_empty() {
        return out;
    }
    // The lookups need the functions by address: `order[j]` is the caller's index of the
    // `j`-th (the identity for the sorted list callers pass).
    let mut order: Vec<usize> = (0..funcs.len()).collect();
    let sorted: Vec<Func>;
    let funcs = if funcs.windows(2).all(|w| w[0].start <= w[1].start) {
        funcs
    } else {
        order.sort_by_key(|&i| funcs[i].start);
        sorted = order.iter().map(|&i| funcs[i]).collect();
        &sorted
    };
    let chunks = chunks(code, resync, funcs);
    let total: usize = chunks.iter().map(|c| c.bytes.len()).sum();
    let heads = Heads::new(funcs);
    let hits = if total < SPLIT_BYTES {
        sweep(&chunks, &heads)
    } else {
        // Two halves of about the same number of bytes.
        let mut acc = 0;
        let mid = chunks
            .iter()
            .position(|c| {
                acc += c.bytes.len();
                acc >= total / 2
            })
            .map_or(chunks.len(), |i| i + 1);
        let (a, b) = chunks.split_at(mid);
        std::thread::scope(|s| {
            let other = s.spawn(|| sweep(b, &heads));
            let mut hits = sweep(a, &heads);
            hits.extend(
                other
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
            hits
        })
    };
    for (j, at, from) in hits {
        let slot = &mut out[order[j]];
        if slot.is_none_or(|s: Inbound| (at, from) < (s.at, s.from)) {
            *slot = Some(Inbound { at, from });
        }
    }
    out
}

/// Cuts `code` at every resync point and function start.
fn chunks<'a>(code: &[Code<'a>], resync: &[u64], funcs: &[Func]) -> Vec<Code<'a>> {
    // Both lists are sorted (the resync points usually hold every start already): merge them.
    let mut points = Vec::with_capacity(resync.len().max(funcs.len()));
    let (mut a, mut b) = (
        resync.iter().peekable(),
        funcs.iter().map(|f| f.start).peekable(),
    );
    loop {
        let p = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(&&x), Some(&y)) if y < x => b.next(),
            (Some(&&x), Some(&y)) if y == x => {
                b.next();
                a.next().copied()
            }
            (Some(_), _) => a.next().copied(),
            (None, Some(_)) => b.next(),
        };
        if let Some(p) = p
            && points.last() != Some(&p)
        {
            points.push(p);
        }
    }
    if !points.is_sorted() {
        // Callers pass sorted lists; whatever they pass, the cuts must be in order.
        points.sort_unstable();
        points.dedup();
    }
    let mut out = Vec::with_capacity(points.len() + code.len());
    for c in code {
        let end = c.vaddr.saturating_add(c.bytes.len() as u64);
        let first = points.partition_point(|&p| p <= c.vaddr);
        let mut at = c.vaddr;
        for &p in points[first..].iter().take_while(|&&p| p < end) {
            out.push(Code {
                vaddr: at,
                bytes: &c.bytes[(at - c.vaddr) as usize..(p - c.vaddr) as usize],
            });
            at = p;
        }
        out.push(Code {
            vaddr: at,
            bytes: &c.bytes[(at - c.vaddr) as usize..],
        });
    }
    out.retain(|c| !c.bytes.is_empty());
    out
}

/// The functions' first bytes, with a bitmap of the addresses that lie in some function's
/// `1..=SPAN` so that most branch targets are rejected by one load.
struct Heads<'a> {
    funcs: &'a [Func],
    /// Address of bit 0 of `bits`.
    lo: u64,
    /// Bit `t - lo`: `t` is within `1..=SPAN` of some start. Empty when the functions span
    /// too much address space for a bitmap (then every target is looked up).
    bits: Vec<u64>,
}

impl<'a> Heads<'a> {
    fn new(funcs: &'a [Func]) -> Self {
        let lo = funcs[0].start.saturating_add(1);
        let hi = funcs[funcs.len() - 1].start.saturating_add(SPAN + 1);
        let mut bits = Vec::new();
        // One bit per byte, for up to 256 MiB of code (a 32 MiB bitmap, most of it never
        // touched, so never given pages).
        if hi - lo <= 1 << 28 {
            bits = vec![0u64; ((hi - lo) as usize).div_ceil(64)];
            for f in funcs {
                let end = f.next.clamp(f.start + 1, f.start + SPAN + 1);
                set_bits(&mut bits, (f.start + 1 - lo) as usize, (end - lo) as usize);
            }
        }
        Self { funcs, lo, bits }
    }

    /// Calls `hit(j, offset)` for each function `j` whose bytes `1..=SPAN` (before its next
    /// symbol) hold `t` and whose own range does not hold `from`.
    #[inline]
    fn lookup(&self, t: u64, from: u64, mut hit: impl FnMut(usize, u8)) {
        if !self.bits.is_empty() {
            let Some(i) = t.checked_sub(self.lo).map(|i| i as usize) else {
                return;
            };
            match self.bits.get(i / 64) {
                Some(w) if w & (1 << (i % 64)) != 0 => {}
                _ => return,
            }
        }
        let mut j = self.funcs.partition_point(|f| f.start < t);
        while j > 0 {
            j -= 1;
            let f = &self.funcs[j];
            let k = t - f.start;
            if k > SPAN {
                break;
            }
            if t < f.next && !(f.start..f.start.saturating_add(f.size)).contains(&from) {
                hit(j, k as u8);
            }
        }
    }
}

/// Sets bits `from..to` of `bits`.
fn set_bits(bits: &mut [u64], from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let n = (to - i).min(64 - i % 64);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << (i % 64)
        };
        bits[i / 64] |= mask;
        i += n;
    }
}

/// Decodes each chunk and returns `(function index, offset, source)` for every branch that
/// enters a function's first bytes from outside it.
fn sweep(chunks: &[Code<'_>], heads: &Heads<'_>) -> Vec<(usize, u8, u64)> {
    let mut hits = Vec::new();
    let mut ins = Instruction::default();
    for c in chunks {
        let mut dec = Decoder::with_ip(64, c.bytes, c.vaddr, DecoderOptions::NONE);
        while dec.can_decode() {
            dec.decode_out(&mut ins);
            // In 64-bit code every direct near branch has one of these as its first operand
            // (an invalid instruction has none).
            if matches!(ins.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32) {
                let t = ins.near_branch_target();
                heads.lookup(t, ins.ip(), |j, k| hits.push((j, k, ins.ip())));
            }
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(start: u64, size: u64, next: u64) -> Func {
        Func { start, size, next }
    }

    #[test]
    fn finds_a_jump_into_another_function_at_3() {
        // At 0x1000, like glibc's __mempcpy_*_unaligned_erms:
        //   mov rax, rdi ; add rax, rdx ; jmp 0x1013 (= memcpy+3) ; 8 bytes of int3
        // At 0x1010, like __memcpy_*: mov rax, rdi ; jmp +0 (to 0x1015, its own next byte)
        //   ; a call to 0x1010+4 from inside itself ; ret
        let mut bytes = vec![0x48, 0x89, 0xf8, 0x48, 0x01, 0xd0, 0xeb, 0x0b];
        bytes.resize(0x10, 0xcc);
        bytes.extend([0x48, 0x89, 0xf8]); // 0x1010 mov rax, rdi
        bytes.extend([0xeb, 0x00]); // 0x1013 jmp 0x1015
        bytes.extend([0xe8, 0xf6, 0xff, 0xff, 0xff]); // 0x1015 call 0x1010 (its own entry)
        bytes.extend([0xe8, 0xf5, 0xff, 0xff, 0xff]); // 0x101a call 0x1014 (own byte 4)
        bytes.push(0xc3); // 0x101f ret
        let code = [Code {
            vaddr: 0x1000,
            bytes: &bytes,
        }];
        let funcs = [f(0x1000, 8, 0x1010), f(0x1010, 0x10, 0x1020)];
        let r = scan(&code, &[], &funcs);
        assert_eq!(r[0], None, "nothing enters the first function inside");
        assert_eq!(
            r[1],
            Some(Inbound {
                at: 3,
                from: 0x1006
            }),
            "the jmp at 0x1006 enters the second at +3; its own branches do not count"
        );
        // The same answers, by the caller's order, for functions given in another order.
        let mut rev = scan(&code, &[], &[funcs[1], funcs[0]]);
        rev.reverse();
        assert_eq!(rev, r);
    }

    #[test]
    fn data_in_a_gap_does_not_hide_later_branches() {
        // 0x2000: a function that is only `ret`, then 7 bytes of "data" in the gap that would
        // swallow the next bytes if the decode ran on (0x48 0x8b 0x84 0x24 = a long mov).
        let mut bytes = vec![0xc3, 0x48, 0x8b, 0x84, 0x24, 0x48, 0x8b, 0x84];
        // 0x2008: a function of 8 bytes: jmp 0x2012 (the third function + 2) ; 6 nops.
        bytes.extend([0xeb, 0x08, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90]);
        // 0x2010: a function of 4 nops and ret.
        bytes.extend([0x90, 0x90, 0x90, 0x90, 0xc3]);
        let code = [Code {
            vaddr: 0x2000,
            bytes: &bytes,
        }];
        let funcs = [
            f(0x2000, 1, 0x2008),
            f(0x2008, 8, 0x2010),
            f(0x2010, 5, 0x2015),
        ];
        let r = scan(&code, &[], &funcs);
        assert_eq!(
            r,
            [
                None,
                None,
                Some(Inbound {
                    at: 2,
                    from: 0x2008
                })
            ]
        );
    }

    #[test]
    fn lowest_offset_and_first_source_win_and_targets_past_next_are_not_counted() {
        // 0x3000: f0, 0x10 bytes of int3 with two jumps; 0x3010: f1 of 3 bytes, then f2.
        let mut bytes = vec![0xeb, 0x0f]; // 0x3000 jmp 0x3011 (f1+1)
        bytes.extend([0xeb, 0x0e]); // 0x3002 jmp 0x3012 (f1+2)
        bytes.extend([0xeb, 0x0c]); // 0x3004 jmp 0x3012 (f1+2 again)
        bytes.extend([0xeb, 0x0d]); // 0x3006 jmp 0x3015 (f2+2, past f1's next)
        bytes.resize(0x10, 0xcc);
        bytes.extend([0x90, 0x90, 0xc3]); // 0x3010 f1
        bytes.extend([0x90, 0x90, 0x90, 0xc3]); // 0x3013 f2
        let code = [Code {
            vaddr: 0x3000,
            bytes: &bytes,
        }];
        let funcs = [
            f(0x3000, 0x10, 0x3010),
            f(0x3010, 3, 0x3013),
            f(0x3013, 4, 0x3017),
        ];
        let r = scan(&code, &[], &funcs);
        assert_eq!(r[0], None);
        assert_eq!(
            r[1],
            Some(Inbound {
                at: 1,
                from: 0x3000
            })
        );
        assert_eq!(
            r[2],
            Some(Inbound {
                at: 2,
                from: 0x3006
            })
        );
    }

    #[test]
    fn a_big_module_split_across_threads_finds_the_same() {
        // 64 Ki functions of 8 bytes (512 KiB: the two-thread path), each `nop*6; jmp`
        // to the next function's +1; the last jumps to the first's +1.
        let n = 64 * 1024u64;
        let base = 0x40_0000u64;
        let mut bytes = Vec::with_capacity((n * 8) as usize);
        let mut funcs = Vec::new();
        for i in 0..n {
            let start = base + i * 8;
            bytes.extend([0x90; 6]);
            let target = if i + 1 == n { base + 1 } else { start + 9 };
            let rel = target.wrapping_sub(start + 8) as i64;
            if (-128..=127).contains(&rel) {
                bytes.extend([0xeb, rel as u8]);
            } else {
                // A 5-byte jmp does not fit: the last function jumps from its 4th byte.
                bytes.truncate(bytes.len() - 3);
                let rel = target.wrapping_sub(start + 8) as i32;
                bytes.push(0xe9);
                bytes.extend(rel.to_le_bytes());
            }
            funcs.push(f(start, 8, start + 8));
        }
        let code = [Code {
            vaddr: base,
            bytes: &bytes,
        }];
        let r = scan(&code, &[], &funcs);
        assert_eq!(r.len(), n as usize);
        for (i, got) in r.iter().enumerate() {
            let from = if i == 0 {
                base + (n - 1) * 8 + 3
            } else {
                base + (i as u64 - 1) * 8 + 6
            };
            assert_eq!(*got, Some(Inbound { at: 1, from }), "function {i}");
        }
    }
}
