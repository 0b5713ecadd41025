//! Malformed objects give an error, never a panic: truncations, bit flips, random bytes,
//! unsupported map types and broken relocations (bounded proptest fuzzing).

use std::path::Path;

use proptest::prelude::*;
use xcover_bpf::object::{self, ObjectError};

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// Loads and insists the outcome is a value or an ordinary error, not a caught panic.
///
/// One exception: aya-obj's own `debug_assert!`s (compiled into test builds only) about a
/// relocation naming a symbol in `.maps` that BTF does not declare as a map; release builds
/// skip the check and our `check_refs` then bounds the map index. The same for its arithmetic
/// overflow checks (`attempt to subtract with overflow` in its relocation code, found by a
/// proptest run), also compiled into test builds only. `load` turns either into
/// `ParserPanicked`, which is still an error, not a crash.
fn load_no_panic(bytes: &[u8]) {
    match object::load(bytes) {
        Ok(progs) => assert!(!progs.is_empty()),
        Err(ObjectError::ParserPanicked(m))
            if cfg!(debug_assertions) && (m.contains("assert") || m.contains("with overflow")) => {}
        Err(ObjectError::ParserPanicked(m)) => panic!("parser panicked: {m}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn le_u16(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes([b[o], b[o + 1]]) as usize
}
fn le_u64(b: &[u8], o: usize) -> usize {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize
}

/// (offset of the section header, name) for every section.
fn sections(b: &[u8]) -> Vec<(usize, String)> {
    let shoff = le_u64(b, 40);
    let n = le_u16(b, 60);
    let shstrndx = le_u16(b, 62);
    let strtab = le_u64(b, shoff + 64 * shstrndx + 24);
    (0..n)
        .map(|i| {
            let h = shoff + 64 * i;
            let name_off = strtab + u32::from_le_bytes(b[h..h + 4].try_into().unwrap()) as usize;
            let end = name_off + b[name_off..].iter().position(|&c| c == 0).unwrap();
            (h, String::from_utf8_lossy(&b[name_off..end]).into_owned())
        })
        .collect()
}

#[test]
fn truncations_are_errors() {
    let obj = read("cover.bpf.o");
    for len in (0..obj.len()).step_by(7) {
        assert!(object::load(&obj[..len]).is_err(), "len {len}");
    }
}

#[test]
fn not_bpf_is_rejected_clearly() {
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let e = object::load(&me).unwrap_err();
    assert!(matches!(e, ObjectError::NotBpfElf(_)), "{e}");
    assert!(object::load(b"").is_err());
    assert!(object::load(&[0u8; 4096]).is_err());
}

#[test]
fn bad_relocations_are_errors() {
    // Point the first map relocation at a symbol that is not a map.
    let mut obj = read("cover.bpf.o");
    let secs = sections(&obj);
    let (h, _) = secs.iter().find(|(_, n)| n == ".reluprobe").unwrap();
    let off = le_u64(&obj, h + 24);
    // r_info = sym << 32 | type: point relocation 0 at symbol 1 (a section or file symbol).
    obj[off + 12..off + 16].copy_from_slice(&1u32.to_le_bytes());
    let e = object::load(&obj).unwrap_err();
    assert!(
        matches!(
            e,
            ObjectError::Relocation(_) | ObjectError::Parse(_) | ObjectError::BadProgram { .. }
        ),
        "{e}"
    );
    // Relocation offset past the end of the program.
    let mut obj = read("cover.bpf.o");
    obj[off..off + 8].copy_from_slice(&0xfff0u64.to_le_bytes());
    load_no_panic(&obj);
    // Misaligned relocation offset.
    let mut obj = read("cover.bpf.o");
    obj[off..off + 8].copy_from_slice(&0x21u64.to_le_bytes());
    assert!(object::load(&obj).is_err());
}

#[test]
fn ringbuf_of_bad_size_is_a_map_error() {
    // The ring buffer's max_entries (256 KiB) is a BTF array length: `int (*max_entries)[262144]`.
    // Replace that u32 in .BTF with a size that is not a power of two.
    let mut obj = read("cover.bpf.o");
    let secs = sections(&obj);
    let (h, _) = secs.iter().find(|(_, n)| n == ".BTF").unwrap();
    let (off, size) = (le_u64(&obj, h + 24), le_u64(&obj, h + 32));
    let needle = (256u32 * 1024).to_le_bytes();
    let at = (0..size - 4)
        .step_by(4)
        .find(|&i| obj[off + i..off + i + 4] == needle)
        .expect("ring size in BTF");
    obj[off + at..off + at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let e = object::load(&obj).unwrap_err();
    assert!(
        matches!(e, ObjectError::BadMap { ref name, .. } if name == "events"),
        "{e}"
    );
    // A map type this runtime does not implement: turn the `int (*type)[2]` array length of
    // `counts` into 3 (PROG_ARRAY); which aligned `2` in .BTF it is, we find by trying.
    let base = read("cover.bpf.o");
    let mut hit = false;
    for i in (off..off + size - 4).step_by(4) {
        if base[i..i + 4] == 2u32.to_le_bytes() {
            let mut o = base.clone();
            o[i..i + 4].copy_from_slice(&3u32.to_le_bytes());
            if let Err(ObjectError::UnsupportedMapType { map_type: 3, .. }) = object::load(&o) {
                hit = true;
                break;
            }
        }
    }
    assert!(hit, "no BTF word turned `counts` into a PROG_ARRAY");
}

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(i, v) in edits {
        let i = i % b.len();
        b[i] = v;
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn fuzz_mutated_cover_object(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::weighted(0.2, any::<usize>()),
    ) {
        let base = read("cover.bpf.o");
        load_no_panic(&mutate(&base, &edits, cut));
    }

    #[test]
    fn fuzz_mutated_globals_object(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let base = read("tests/object_globals.bpf.o");
        load_no_panic(&mutate(&base, &edits, None));
    }

    #[test]
    fn fuzz_mutated_section_headers(
        edits in proptest::collection::vec((0usize..27 * 64, any::<u8>()), 1..4),
    ) {
        let base = read("cover.bpf.o");
        let shoff = le_u64(&base, 40);
        let edits: Vec<(usize, u8)> = edits.iter().map(|&(i, v)| (shoff + i, v)).collect();
        load_no_panic(&mutate(&base, &edits, None));
    }

    #[test]
    fn fuzz_random_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048), elf in any::<bool>()) {
        if elf && bytes.len() >= 64 {
            bytes[..4].copy_from_slice(b"\x7fELF");
            bytes[4] = 2;
            bytes[5] = 1;
            bytes[16] = 1;
            bytes[17] = 0;
            bytes[18] = 247;
            bytes[19] = 0;
        }
        load_no_panic(&bytes);
    }
}
