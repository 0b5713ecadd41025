//! xcover's integration tests: one test binary, one module per area. They run real
//! processes built from the sources in `tests/targets/` at test time.

mod conformance;
mod e2e;
mod golang;
mod faults;
mod hostile;
mod security;
mod hook;
mod inject;
mod maps;
mod realprog;
mod support;
mod tui;
