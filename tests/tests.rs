//! xcover's integration tests: one test binary, one module per area. They run real
//! processes built from the sources in `tests/targets/` at test time.

mod conformance;
mod corpus;
mod e2e;
mod faults;
mod flood;
mod golang;
mod hook;
mod hostile;
mod inject;
mod lifecycle;
mod maps;
mod outputs;
mod prod;
mod realprog;
mod security;
mod support;
mod trap;
mod trees;
mod tui;
