//! JSON: the [`Json`] report format, the [`Report`] itself serialized (what `merge` reads).

use super::{Report, ReportFormat};

/// The JSON report: every field of [`Report`], pretty-printed, ending with a newline.
#[derive(Debug, Clone, Copy)]
pub struct Json;

impl ReportFormat for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn extension(&self) -> &'static str {
        "json"
    }

    fn write(&self, report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, report)?;
        out.write_all(b"\n")
    }
}
