//! xcover's JSON report, read back.

use std::path::Path;

/// The report at `p`, parsed.
pub fn read_report(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read the report {}: {e}", p.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the report {} is not JSON: {e}", p.display()))
}

/// The entry of the function whose raw name is `name`.
pub fn function<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["functions"]
        .as_array()
        .expect("functions[] in the report")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from the report"))
}

/// `(hits, hit)` of the function whose raw name is `name`.
pub fn hits(r: &serde_json::Value, name: &str) -> (u64, bool) {
    let f = function(r, name);
    (f["hits"].as_u64().unwrap(), f["hit"].as_bool().unwrap())
}
