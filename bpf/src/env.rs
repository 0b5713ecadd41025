//! What a program may touch: helpers by id, maps by index.

/// A helper as both the interpreter and the JIT call it: `r1..r5` in, `r0` out, System V
/// calling convention.
pub type HelperFn = unsafe extern "C" fn(u64, u64, u64, u64, u64) -> u64;

/// The world a program runs in. Built by whoever runs the program (the agent in the target,
/// the conformance runner, tests) and given to the interpreter or the JIT.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env<'a> {
    /// Helper functions by Linux helper id.
    pub helpers: &'a [(u32, HelperFn)],
    /// Per map index: the address `lddw rX, map` loads (`BPF_PSEUDO_MAP_FD`), i.e. the
    /// map's header in the arena, which helpers such as `bpf_map_lookup_elem` receive.
    pub map_addrs: &'a [u64],
    /// Per map index: address of the map's first value, for `BPF_PSEUDO_MAP_VALUE`
    /// (`.data`/`.rodata` globals); 0 when the map has none.
    pub map_value_addrs: &'a [u64],
    /// A helper id that ends the program (with `r0 = 0`) when it returns 0: the
    /// bpf_conformance "unwind" helper. `None` for real probes.
    pub unwind_helper: Option<u32>,
}

impl Env<'_> {
    /// The helper registered for `id`.
    pub fn helper(&self, id: u32) -> Option<HelperFn> {
        self.helpers.iter().find(|(i, _)| *i == id).map(|(_, f)| *f)
    }
}
