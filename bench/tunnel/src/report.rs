//! The results table: one row per metric, the three routes side by side,
//! ratios, the target, and whether it was met.

use sbx_bench_support::report::{self, Verdict};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Bytes per second, shown as MB/s (10^6 B).
    Throughput,
    /// Seconds, shown in µs.
    Micros,
    /// Bytes, shown as MB (10^6 B).
    Megabytes,
    /// CPU seconds per GB moved.
    CpuPerGb,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Self::Throughput => format!("{:.0} MB/s", v / 1e6),
            Self::Micros => format!("{:.1} µs", v * 1e6),
            Self::Megabytes => format!("{:.1} MB", v / 1e6),
            Self::CpuPerGb => format!("{v:.2} s/GB"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Throughput => "bytes_per_sec",
            Self::Micros => "seconds",
            Self::Megabytes => "bytes",
            Self::CpuPerGb => "cpu_seconds_per_gb",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: Unit,
    pub tunnel: Option<f64>,
    pub direct: Option<f64>,
    pub peer: Option<f64>,
    pub ratios: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn info(metric: impl Into<String>, unit: Unit) -> Self {
        Self {
            metric: metric.into(),
            unit,
            tunnel: None,
            direct: None,
            peer: None,
            ratios: String::new(),
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    pub fn values(mut self, tunnel: Option<f64>, direct: Option<f64>, peer: Option<f64>) -> Self {
        self.tunnel = tunnel;
        self.direct = direct;
        self.peer = peer;
        self
    }

    pub fn ratios(mut self, ratios: String) -> Self {
        self.ratios = ratios;
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
            "unit": self.unit.name(),
            "sbx_tunnel": self.tunnel,
            "direct_tcp": self.direct,
            "peer": self.peer,
            "ratios": self.ratios,
            "target": self.target,
            "verdict": self.verdict.label(),
        })
    }
}

/// Renders the rows as an aligned text table.
pub fn table(rows: &[Row], peer_name: &str) -> String {
    let headers = [
        "metric",
        "sbx tunnel",
        "direct TCP",
        peer_name,
        "ratio(s)",
        "target",
        "result",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.metric.clone(),
                r.cell(r.tunnel),
                r.cell(r.direct),
                r.cell(r.peer),
                r.ratios.clone(),
                r.target.clone(),
                r.verdict.label().to_owned(),
            ]
        })
        .collect();
    report::table(&headers, &cells)
}
