//! The live coverage TUI (ratatui + crossterm), drawn from snapshots of a session's shared
//! memory. Filled in by the TUI work; until then `xcover attach` prints a plain status line.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
