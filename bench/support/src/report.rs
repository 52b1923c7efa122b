//! The parts of the results table every bench renders alike: the verdict
//! column, ratio cells, the aligned text layout, and the JSON file. Which
//! columns and units a bench has stays in that bench.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// No target, or its inputs could not be measured.
    Info,
}

impl Verdict {
    /// `met` is `None` when there is no target, or its inputs are missing
    /// for a reason outside the code under test (a baseline could not be
    /// measured).
    pub fn from_check(met: Option<bool>) -> Self {
        match met {
            Some(true) => Self::Pass,
            Some(false) => Self::Miss,
            None => Self::Info,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Miss => "MISS",
            Self::Info => "-",
        }
    }
}

/// `a / b` as text, when both are known.
pub fn ratio(label: &str, a: Option<f64>, b: Option<f64>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(format!("{label} {:.2}", a / b)),
        _ => None,
    }
}

/// Renders `headers` and the rows of `cells` as an aligned text table:
/// columns padded to their widest cell, ` | ` between them, a `-|-` rule
/// under the headers, no trailing blanks.
pub fn table(headers: &[&str], cells: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cols: &[String]| {
        let parts: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", parts.join(" | ").trim_end());
    };
    let header_cells: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    line(&mut out, &header_cells);
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    let _ = writeln!(out, "{}", rule.join("-|-"));
    for row in cells {
        line(&mut out, row);
    }
    out
}

/// Writes `doc` pretty-printed to `path` (the `--json` file).
pub fn write_json(path: &Path, doc: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(doc).context("encode JSON")?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let cells = vec![
            vec!["rtt".to_owned(), "12.5 µs".to_owned(), String::new()],
            vec![
                "throughput".to_owned(),
                "1 MB/s".to_owned(),
                "PASS".to_owned(),
            ],
        ];
        let out = table(&["metric", "value", "result"], &cells);
        assert_eq!(
            out,
            "metric     | value   | result\n\
             -----------|---------|-------\n\
             rtt        | 12.5 µs |\n\
             throughput | 1 MB/s  | PASS\n"
        );
    }

    #[test]
    fn ratio_needs_both_figures() {
        assert_eq!(ratio("x", Some(3.0), Some(2.0)).as_deref(), Some("x 1.50"));
        assert_eq!(ratio("x", Some(3.0), Some(0.0)), None);
        assert_eq!(ratio("x", None, Some(2.0)), None);
        assert_eq!(Verdict::from_check(Some(false)), Verdict::Miss);
    }
}
