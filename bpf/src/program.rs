//! A loaded program: its instructions and the maps it references, by index.
//!
//! [`crate::object`] produces a [`Program`] from an ELF object; tests and the conformance
//! runner build them by hand. Map references in `insns` are already rewritten: `lddw` with
//! `src = 1` and `imm = i` means "the header of map `i`", with `src = 2` "the first value of
//! map `i` plus the second instruction's `imm`" (see [`crate::env::Env`]).

use alloc::string::String;
use alloc::vec::Vec;

use crate::insn::Insn;

/// Map types this runtime supports: part of the arena's layout, defined with it.
pub use xcover_session::arena::MapType;

/// `BPF_F_RDONLY_PROG`: the program may only read the map (`.rodata`).
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// What a program says about one of its maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// Name in the object (`counts`, `.rodata`, ...).
    pub name: String,
    /// The map's type.
    pub map_type: MapType,
    /// Key size in bytes (4 for arrays; 0 for ring buffers).
    pub key_size: u32,
    /// Value size in bytes (0 for ring buffers).
    pub value_size: u32,
    /// Number of entries; for a ring buffer, its data size in bytes (a power of two).
    pub max_entries: u32,
    /// `BPF_F_*` flags.
    pub flags: u32,
    /// Initial contents of entry 0 (`.data`/`.rodata` globals), at most `value_size` bytes;
    /// empty for ordinary maps.
    pub initial_data: Vec<u8>,
}

impl MapDef {
    /// A map definition with no flags and no initial data.
    pub fn new(
        name: &str,
        map_type: MapType,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    ) -> Self {
        MapDef {
            name: String::from(name),
            map_type,
            key_size,
            value_size,
            max_entries,
            flags: 0,
            initial_data: Vec::new(),
        }
    }
}

/// One program ready for the verifier: instructions plus the maps they index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The program's (function) name.
    pub name: String,
    /// Its instructions, bpf-to-bpf callees appended, map references resolved to indices.
    pub insns: Vec<Insn>,
    /// The maps, in index order.
    pub maps: Vec<MapDef>,
}

impl Program {
    /// Index of the map called `name`.
    pub fn map_index(&self, name: &str) -> Option<usize> {
        self.maps.iter().position(|m| m.name == name)
    }
}
