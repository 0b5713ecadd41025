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

/// Modules with less code than this are swept by one thread.
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
    let points = cut_points(resync, funcs);
    let spans = spans(code, &points);
    let total: usize = spans.iter().map(|s| s.code.bytes.len()).sum();
    let heads = Heads::new(funcs);
    let hits = if total < SPLIT_BYTES {
        sweep(&spans, &heads)
    } else {
        let (a, b) = halves(&spans, total);
        std::thread::scope(|s| {
            let other = s.spawn(|| sweep(&b, &heads));
            let mut hits = sweep(&a, &heads);
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

/// Every resync point and function start, sorted, once each.
fn cut_points(resync: &[u64], funcs: &[Func]) -> Vec<u64> {
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
    points
}

/// Contiguous code and the points inside it where decoding starts again.
#[derive(Clone, Copy, Debug)]
struct Span<'a, 'p> {
    code: Code<'a>,
    /// Sorted addresses strictly inside `code`.
    cuts: &'p [u64],
}

/// One span per code range, with the cut points that fall inside it.
fn spans<'a, 'p>(code: &[Code<'a>], points: &'p [u64]) -> Vec<Span<'a, 'p>> {
    code.iter()
        .filter(|c| !c.bytes.is_empty())
        .map(|c| {
            let end = c.vaddr.saturating_add(c.bytes.len() as u64);
            let first = points.partition_point(|&p| p <= c.vaddr);
            let last = points.partition_point(|&p| p < end).max(first);
            Span {
                code: *c,
                cuts: &points[first..last],
            }
        })
        .collect()
}

/// Splits `spans` (holding `total` bytes) into two lists of about the same number of
/// bytes, cutting the span in the middle at one of its cut points.
fn halves<'a, 'p>(spans: &[Span<'a, 'p>], total: usize) -> (Vec<Span<'a, 'p>>, Vec<Span<'a, 'p>>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut acc = 0;
    for s in spans {
        let len = s.code.bytes.len();
        if acc >= total / 2 {
            b.push(*s);
        } else if acc + len <= total / 2 || s.cuts.is_empty() {
            a.push(*s);
        } else {
            // Cut this one at its first point past the middle (or its last point).
            let mid = s.code.vaddr + (total / 2 - acc) as u64;
            let i = s.cuts.partition_point(|&p| p < mid).min(s.cuts.len() - 1);
            let at = (s.cuts[i] - s.code.vaddr) as usize;
            let (head, tail) = s.code.bytes.split_at(at);
            a.push(Span {
                code: Code {
                    vaddr: s.code.vaddr,
                    bytes: head,
                },
                cuts: &s.cuts[..i],
            });
            b.push(Span {
                code: Code {
                    vaddr: s.cuts[i],
                    bytes: tail,
                },
                cuts: &s.cuts[i + 1..],
            });
        }
        acc += len;
    }
    (a, b)
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

/// For each of `funcs` (link-time start and size, sorted by start), whether it is a part
/// of another function (`parts[i]`: a `.cold` region, entered by a jump) that a function
/// keeping data below its stack pointer jumps to, or that does so itself. Such code may
/// have live data in the x86-64 red zone (the 128 bytes below `rsp` a leaf function may
/// use without moving `rsp`) when the part is entered: a jump from its first byte to a
/// trampoline, which pushes below `rsp`, would overwrite it. A function entry never has
/// live data there (the caller's `call` just pushed the return address).
///
/// A function keeps data there when one of its instructions addresses memory at `rsp`
/// with a negative displacement. Only direct `jmp`/`jcc` from it to the part's first byte
/// are followed.
pub fn red_zone_parts(code: &[Code<'_>], funcs: &[(u64, u64)], parts: &[bool]) -> Vec<bool> {
    let mut out = vec![false; funcs.len()];
    let part_at: std::collections::HashMap<u64, usize> = funcs
        .iter()
        .enumerate()
        .filter(|&(i, _)| parts[i])
        .map(|(i, f)| (f.0, i))
        .collect();
    if part_at.is_empty() {
        return out;
    }
    let mut targets = Vec::new();
    for (i, &(start, size)) in funcs.iter().enumerate() {
        let Some(c) = code
            .iter()
            .find(|c| start >= c.vaddr && start < c.vaddr + c.bytes.len() as u64)
        else {
            continue;
        };
        let from = (start - c.vaddr) as usize;
        let to = (from as u64 + size).min(c.bytes.len() as u64) as usize;
        let mut d = Decoder::with_ip(64, &c.bytes[from..to], start, DecoderOptions::NONE);
        let mut ins = Instruction::default();
        let mut below_rsp = false;
        targets.clear();
        while d.can_decode() {
            d.decode_out(&mut ins);
            if ins.is_invalid() {
                continue;
            }
            if !below_rsp
                && ins.memory_base() == iced_x86::Register::RSP
                && (0..ins.op_count()).any(|k| ins.op_kind(k) == OpKind::Memory)
                && (ins.memory_displacement64() as i64) < 0
            {
                below_rsp = true;
            }
            // A direct near branch that is not a call (a jump to a part never returns).
            if matches!(ins.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32)
                && ins.mnemonic() != iced_x86::Mnemonic::Call
                && let Some(&p) = part_at.get(&ins.near_branch_target())
            {
                targets.push(p);
            }
        }
        if below_rsp {
            if parts[i] {
                out[i] = true;
            }
            for &p in &targets {
                out[p] = true;
            }
        }
    }
    out
}

/// Decodes each span and returns `(function index, offset, source)` for every branch that
/// enters a function's first bytes from outside it. One decoder runs over a whole span: an
/// instruction that would cross a cut point is dropped and decoding starts again at the
/// point, as if each run between two points were decoded on its own.
fn sweep(spans: &[Span<'_, '_>], heads: &Heads<'_>) -> Vec<(usize, u8, u64)> {
    let mut hits = Vec::new();
    let mut ins = Instruction::default();
    for s in spans {
        let base = s.code.vaddr;
        let end = base + s.code.bytes.len() as u64;
        let mut dec = Decoder::with_ip(64, s.code.bytes, base, DecoderOptions::NONE);
        let mut cuts = s.cuts.iter().copied();
        let mut next = cuts.next().unwrap_or(end);
        while dec.can_decode() {
            dec.decode_out(&mut ins);
            if ins.len() == 0 {
                break; // no progress: the decoder is done
            }
            let ins_end = ins.next_ip();
            if ins_end > next {
                // Runs over a symbol (data before it, or code the decode lost step with):
                // not an instruction of either side.
                if dec.set_position((next - base) as usize).is_err() {
                    break;
                }
                dec.set_ip(next);
                next = cuts.next().unwrap_or(end);
                continue;
            }
            if ins_end == next {
                next = cuts.next().unwrap_or(end);
            }
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

    #[test]
    fn one_decoder_per_span_finds_what_a_decoder_per_run_finds_in_libc() {
        // This process's libc, cut at its dynamic symbols (and a cut every 4 KiB, mostly
        // inside instructions): the sweep (one decoder per section, two threads) must give
        // what decoding every run between two cuts on its own gives, by brute force.
        let maps = xcover_injector::procfs::own_mappings().unwrap();
        let path = &maps
            .iter()
            .find(|m| m.path.contains("/libc.so"))
            .expect("libc mapped")
            .path;
        let bytes = std::fs::read(path).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let code = code_ranges(&elf, &bytes);
        let mut starts: Vec<(u64, u64)> = elf
            .dynsyms
            .iter()
            .filter(|s| s.is_function() && s.st_value != 0 && s.st_size != 0)
            .map(|s| (s.st_value, s.st_size))
            .collect();
        starts.sort_unstable();
        starts.dedup_by_key(|s| s.0);
        let funcs: Vec<Func> = starts
            .iter()
            .enumerate()
            .map(|(i, &(start, size))| Func {
                start,
                size,
                next: starts.get(i + 1).map_or(start + size, |n| n.0),
            })
            .collect();
        let (lo, hi) = (code[0].vaddr, code[code.len() - 1].vaddr + 0x10_0000);
        let resync: Vec<u64> = (lo..hi).step_by(4096).collect();
        let got = scan(&code, &resync, &funcs);

        let mut cuts: Vec<u64> = resync
            .iter()
            .copied()
            .chain(starts.iter().map(|s| s.0))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut want = vec![None::<Inbound>; funcs.len()];
        let mut branches = 0;
        for c in &code {
            let end = c.vaddr + c.bytes.len() as u64;
            let mut at = c.vaddr;
            while at < end {
                let stop = cuts
                    .iter()
                    .copied()
                    .find(|&p| p > at)
                    .unwrap_or(end)
                    .min(end);
                let run = &c.bytes[(at - c.vaddr) as usize..(stop - c.vaddr) as usize];
                for ins in Decoder::with_ip(64, run, at, DecoderOptions::NONE) {
                    if ins.op0_kind() != OpKind::NearBranch64 {
                        continue;
                    }
                    branches += 1;
                    let (t, from) = (ins.near_branch_target(), ins.ip());
                    // Every function whose first SPAN bytes may hold `t` (starts are sorted).
                    let first = funcs.partition_point(|f| f.start + SPAN < t);
                    let last = funcs.partition_point(|f| f.start < t);
                    for (j, f) in funcs.iter().enumerate().take(last).skip(first) {
                        let inside = (f.start..f.start + f.size).contains(&from);
                        if t > f.start && t <= f.start + SPAN && t < f.next && !inside {
                            let hit = Inbound {
                                at: (t - f.start) as u8,
                                from,
                            };
                            if want[j].is_none_or(|w| (hit.at, hit.from) < (w.at, w.from)) {
                                want[j] = Some(hit);
                            }
                        }
                    }
                }
                at = stop;
            }
        }
        assert!(branches > 10_000, "libc has branches: {branches}");
        assert!(
            want.iter().any(Option::is_some),
            "some function is entered inside"
        );
        assert_eq!(got, want);
    }
}
