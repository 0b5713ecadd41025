//! The probe contract's C header (`session/include/xcover_probe.h`) and its Rust twin
//! (`xcover_session::probe`) agree: the header is compiled with the C compiler, with a
//! static assertion per field on the offsets and sizes the Rust struct has; and the
//! built-in probe's source takes `struct first_hit` from that header, not from a copy.

use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use xcover_session::probe::FirstHit;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `_Static_assert`s of `struct first_hit`'s size and of each field's offset and size.
fn checks() -> String {
    let fields = [
        ("cookie", offset_of!(FirstHit, cookie), size_of::<u64>()),
        ("ts_ns", offset_of!(FirstHit, ts_ns), size_of::<u64>()),
        ("tid", offset_of!(FirstHit, tid), size_of::<u32>()),
        ("_pad", offset_of!(FirstHit, _pad), size_of::<u32>()),
    ];
    let mut c = String::from(
        "#include <stddef.h>\n\
         typedef unsigned int __u32;\n\
         typedef unsigned long long __u64;\n\
         #include \"xcover_probe.h\"\n",
    );
    c += &format!(
        "_Static_assert(sizeof(struct first_hit) == {}, \"sizeof(struct first_hit) is not \
         FirstHit::SIZE ({})\");\n",
        FirstHit::SIZE,
        FirstHit::SIZE
    );
    for (name, off, size) in fields {
        c += &format!(
            "_Static_assert(offsetof(struct first_hit, {name}) == {off}, \"first_hit.{name}: \
             offset is not {off}\");\n\
             _Static_assert(sizeof(((struct first_hit *)0)->{name}) == {size}, \
             \"first_hit.{name}: size is not {size}\");\n"
        );
    }
    c
}

#[test]
fn c_header_matches_first_hit() {
    let dir = std::env::temp_dir().join(format!("xcover-probe-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("check.c");
    std::fs::write(&src, checks()).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only", "-I"])
        .arg(root().join("session/include"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "xcover_probe.h disagrees with xcover_session::probe::FirstHit:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_probe_takes_first_hit_from_the_header() {
    let c = std::fs::read_to_string(root().join("bpf/cover.bpf.c")).unwrap();
    assert!(c.contains("#include \"../session/include/xcover_probe.h\""));
    assert!(
        !c.contains("struct first_hit {"),
        "bpf/cover.bpf.c defines its own struct first_hit"
    );
}
