//! xcover: live function coverage of a running process.
#![forbid(unsafe_code)]
fn main() {}
