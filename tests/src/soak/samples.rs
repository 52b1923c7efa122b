//! Resident memory and open file descriptors of the daemons under soak,
//! read from /proc, and the verdict on their growth.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// Growth allowed between the warm-up and the end.
pub const MAX_GROWTH: f64 = 0.10;
/// Rows printed at most; longer runs print every n-th sample.
const TABLE_ROWS: usize = 40;

/// A daemon watched by PID.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: &'static str,
    pub pid: u32,
}

/// One daemon's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: u64,
}

/// Every watched daemon's figures at one moment since the start.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub usage: Vec<Usage>,
}

/// VmRSS and the number of entries in /proc/<pid>/fd.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for {pid}"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("list fds of {pid}"))?
        .count() as u64;
    Ok(Usage { rss_kib, fds })
}

/// How one figure of one daemon moved: the highest value in the second
/// half of the warm-up against the lowest of the last three samples. A
/// leak raises the floor at the end above the ceiling at the start; noise
/// (tunnels and sessions open at the moment of a sample) does not.
#[derive(Debug, Clone)]
pub struct Growth {
    pub daemon: &'static str,
    pub figure: &'static str,
    pub baseline: u64,
    pub end: u64,
}

impl Growth {
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0 {
            return 0.0;
        }
        self.end as f64 / self.baseline as f64 - 1.0
    }

    pub fn too_much(&self) -> bool {
        self.ratio() > MAX_GROWTH
    }
}

/// Growth of every figure of every daemon; empty if there are too few
/// samples to judge (the caller fails on that).
pub fn growth(watched: &[Watched], samples: &[Sample], warm_up: Duration) -> Vec<Growth> {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= warm_up / 2 && s.at <= warm_up)
        .collect();
    let last: Vec<&Sample> = samples.iter().rev().take(3).collect();
    if window.is_empty() || last.len() < 3 || last.iter().any(|s| s.at <= warm_up) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (d, w) in watched.iter().enumerate() {
        type Pick = fn(&Usage) -> u64;
        let figures: [(&str, Pick); 2] = [("RSS KiB", |u| u.rss_kib), ("fds", |u| u.fds)];
        for (figure, pick) in figures {
            let baseline = window.iter().map(|s| pick(&s.usage[d])).max().unwrap_or(0);
            let end = last.iter().map(|s| pick(&s.usage[d])).min().unwrap_or(0);
            out.push(Growth {
                daemon: w.name,
                figure,
                baseline,
                end,
            });
        }
    }
    out
}

/// The samples as a table (every n-th when there are many), the warm-up's
/// end marked.
pub fn table(watched: &[Watched], samples: &[Sample], warm_up: Duration) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:>8}", "t");
    for w in watched {
        let _ = write!(out, " {:>14} {:>10}", format!("{} RSS KiB", w.name), "fds");
    }
    out.push('\n');
    let stride = samples.len().div_ceil(TABLE_ROWS).max(1);
    let mut marked = false;
    for (n, s) in samples.iter().enumerate() {
        let is_last = n + 1 == samples.len();
        if n % stride != 0 && !is_last {
            continue;
        }
        if !marked && s.at > warm_up {
            out.push_str("   -- warm-up ends --\n");
            marked = true;
        }
        let _ = write!(out, "{:>7.0}s", s.at.as_secs_f64());
        for u in &s.usage {
            let _ = write!(out, " {:>14} {:>10}", u.rss_kib, u.fds);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secs: u64, rss: u64, fds: u64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            usage: vec![Usage { rss_kib: rss, fds }],
        }
    }

    fn watched() -> Vec<Watched> {
        vec![Watched { name: "d", pid: 1 }]
    }

    #[test]
    fn noise_passes_and_a_raised_floor_fails() {
        let warm = Duration::from_secs(10);
        let noisy: Vec<Sample> = (0..30)
            .map(|t| sample(t, 1000 + (t % 3) * 50, 10 + t % 4))
            .collect();
        assert!(growth(&watched(), &noisy, warm)
            .iter()
            .all(|g| !g.too_much()));
        let leaking: Vec<Sample> = (0..30).map(|t| sample(t, 1000 + t * 20, 10)).collect();
        let g = growth(&watched(), &leaking, warm);
        assert!(
            g.iter().any(|g| g.figure == "RSS KiB" && g.too_much()),
            "{g:?}"
        );
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        let warm = Duration::from_secs(10);
        let short: Vec<Sample> = (0..9).map(|t| sample(t, 1000, 10)).collect();
        assert!(growth(&watched(), &short, warm).is_empty());
    }
}
