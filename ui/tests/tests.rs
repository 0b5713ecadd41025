//! Integration tests of the TUI: rendering against ratatui's `TestBackend`, compared with
//! plain-text snapshots in `tests/snapshots/` (`UPDATE_SNAPSHOTS=1` rewrites them).

mod render;
mod support;
mod terminal;
