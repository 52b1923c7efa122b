//! The results table: one row per metric, the four targets side by side,
//! ratios, the target, and whether it was met.

use sbx_bench_support::report::{self, Verdict};
use serde_json::{json, Value};

/// Column order of every row's values.
pub const DIRECT: usize = 0;
pub const NGINX: usize = 1;
pub const PROXY: usize = 2;
pub const FLOOR: usize = 3;
pub const LANES: usize = 4;
pub const LABELS: [&str; LANES] = [
    "direct",
    "nginx (1 hop)",
    "sbx-proxy (2 hops)",
    "nginx+fwd (2 hops)",
];
const JSON_KEYS: [&str; LANES] = ["direct", "nginx", "sbx_proxy", "nginx_forwarder"];

#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Requests per second.
    Rate,
    /// Seconds, shown in µs.
    Micros,
    /// Seconds, shown in ms.
    Millis,
    /// Bytes per second, shown as MB/s (10^6 B).
    Throughput,
    /// Bytes, shown as MB (10^6 B).
    Megabytes,
    /// A plain count.
    Count,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Self::Rate => format!("{v:.0} req/s"),
            Self::Micros => format!("{:.1} µs", v * 1e6),
            Self::Millis => format!("{:.2} ms", v * 1e3),
            Self::Throughput => format!("{:.0} MB/s", v / 1e6),
            Self::Megabytes => format!("{:.1} MB", v / 1e6),
            Self::Count => format!("{v:.0}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rate => "requests_per_sec",
            Self::Micros | Self::Millis => "seconds",
            Self::Throughput => "bytes_per_sec",
            Self::Megabytes => "bytes",
            Self::Count => "count",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: Unit,
    pub values: [Option<f64>; LANES],
    pub ratios: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn new(metric: impl Into<String>, unit: Unit, values: [Option<f64>; LANES]) -> Self {
        Self {
            metric: metric.into(),
            unit,
            values,
            ratios: String::new(),
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    pub fn ratios(mut self, parts: impl IntoIterator<Item = Option<String>>) -> Self {
        self.ratios = parts.into_iter().flatten().collect::<Vec<_>>().join(", ");
        self
    }

    /// `met` is `None` when the inputs are missing for a reason outside the
    /// proxy (a baseline could not be measured).
    pub fn target(mut self, target: &str, met: Option<bool>) -> Self {
        self.target = target.to_owned();
        self.verdict = Verdict::from_check(met);
        self
    }

    fn cell(&self, v: Option<f64>) -> String {
        v.map(|v| self.unit.show(v)).unwrap_or_else(|| "n/a".into())
    }

    pub fn to_json(&self) -> Value {
        let mut values = serde_json::Map::new();
        for (key, v) in JSON_KEYS.iter().zip(self.values) {
            values.insert((*key).to_owned(), json!(v));
        }
        json!({
            "metric": self.metric,
            "unit": self.unit.name(),
            "values": values,
            "ratios": self.ratios,
            "target": self.target,
            "verdict": self.verdict.label(),
        })
    }
}

/// `a - b` in µs as text, when both are known (inputs in seconds).
pub fn added_micros(label: &str, a: Option<f64>, b: Option<f64>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{label} +{:.0} µs", (a - b) * 1e6)),
        _ => None,
    }
}

/// Renders the rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let mut headers = vec!["metric"];
    headers.extend(LABELS);
    headers.extend(["ratio(s)", "target", "result"]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![r.metric.clone()];
            c.extend(r.values.iter().map(|&v| r.cell(v)));
            c.extend([
                r.ratios.clone(),
                r.target.clone(),
                r.verdict.label().to_owned(),
            ]);
            c
        })
        .collect();
    report::table(&headers, &cells)
}
