//! The results table: one row per figure, sbx-host's value beside its
//! floor from the same run, the ratio and difference, the target, and the
//! accelerator the figure ran on.

use std::time::Duration;

use sbx_bench_support::report::{self, Verdict};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Seconds.
    Time,
    /// Bytes, shown in MiB.
    Bytes,
}

impl Unit {
    pub fn show(self, v: f64) -> String {
        match self {
            Self::Time => {
                let ms = v * 1e3;
                if ms >= 1000.0 {
                    format!("{v:.2} s")
                } else if ms >= 10.0 {
                    format!("{ms:.1} ms")
                } else {
                    format!("{ms:.2} ms")
                }
            }
            Self::Bytes => {
                let mib = v / (1024.0 * 1024.0);
                if mib.abs() >= 10.0 || mib == 0.0 {
                    format!("{mib:.1} MiB")
                } else {
                    format!("{mib:.2} MiB")
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Time => "seconds",
            Self::Bytes => "bytes",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    /// `kvm`, `tcg`, or `-` (no VM).
    pub accel: String,
    pub unit: Unit,
    pub value: Option<f64>,
    pub floor: Option<f64>,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    /// A row with the ratio and difference to the floor filled in.
    pub fn new(
        metric: impl Into<String>,
        accel: &str,
        unit: Unit,
        value: Option<f64>,
        floor: Option<f64>,
    ) -> Self {
        let ratio = match (value, floor) {
            (Some(v), Some(f)) if f > 0.0 => {
                let d = v - f;
                let sign = if d < 0.0 { "-" } else { "+" };
                format!("x{:.2} ({sign}{})", v / f, unit.show(d.abs()))
            }
            _ => String::new(),
        };
        Self {
            metric: metric.into(),
            accel: accel.to_owned(),
            unit,
            value,
            floor,
            ratio,
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    pub fn ratio_text(mut self, text: impl Into<String>) -> Self {
        self.ratio = text.into();
        self
    }

    pub fn target(mut self, target: &str, met: Option<bool>) -> Self {
        self.target = target.to_owned();
        self.verdict = Verdict::from_check(met);
        self
    }

    fn cell(&self, v: Option<f64>) -> String {
        v.map(|v| self.unit.show(v)).unwrap_or_else(|| "n/a".into())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "metric": self.metric,
            "accel": self.accel,
            "unit": self.unit.name(),
            "sbx_host": self.value,
            "floor": self.floor,
            "ratio": self.ratio,
            "target": self.target,
            "verdict": self.verdict.label(),
        })
    }
}

pub fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

pub fn table(rows: &[Row]) -> String {
    let headers = [
        "metric", "accel", "sbx-host", "floor", "ratio", "target", "result",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.metric.clone(),
                r.accel.clone(),
                r.cell(r.value),
                r.cell(r.floor),
                r.ratio.clone(),
                r.target.clone(),
                r.verdict.label().to_owned(),
            ]
        })
        .collect();
    report::table(&headers, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_ratios() {
        assert_eq!(Unit::Time.show(2.3456), "2.35 s");
        assert_eq!(Unit::Time.show(0.0823), "82.3 ms");
        assert_eq!(Unit::Time.show(0.00042), "0.42 ms");
        assert_eq!(Unit::Bytes.show(3.0 * 1024.0 * 1024.0), "3.00 MiB");
        assert_eq!(Unit::Bytes.show(120.0 * 1024.0 * 1024.0), "120.0 MiB");
        assert_eq!(Unit::Bytes.show(0.0), "0.0 MiB");
        let r = Row::new("x", "-", Unit::Time, Some(0.3), Some(0.2));
        assert_eq!(r.ratio, "x1.50 (+100.0 ms)");
        let r = Row::new("x", "-", Unit::Time, Some(0.1), Some(0.2));
        assert_eq!(r.ratio, "x0.50 (-100.0 ms)");
        assert_eq!(Row::new("x", "-", Unit::Time, None, Some(0.2)).ratio, "");
    }
}
