//! Link flags that make the agent self-contained: no C runtime start files, no default
//! libraries (so no libc, no NEEDED), every reference bound inside the object
//! (`-Bsymbolic`: no PLT/GOT symbol relocations) and the link failing on any undefined
//! symbol (`-z defs`) rather than producing an object that would import it.
fn main() {
    for arg in [
        "-nostartfiles",
        "-nodefaultlibs",
        "-Wl,-Bsymbolic",
        "-Wl,-z,defs",
        "-Wl,-z,noexecstack",
        "-Wl,-z,separate-code",
        "-Wl,--hash-style=gnu",
        "-Wl,--build-id=sha1",
    ] {
        println!("cargo:rustc-cdylib-link-arg={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
