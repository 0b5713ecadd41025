//! Build script: embeds the agent (filled in by the injector work).
fn main() {}
