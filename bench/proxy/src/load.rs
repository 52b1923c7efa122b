//! The load generators, the same for every target: `wrk` (HTTP/1.1
//! keep-alive) and `h2load` (h2c with prior knowledge), run as children and
//! their summaries parsed. Any non-2xx answer fails the run: a proxy that
//! answers errors quickly must not look fast.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub requests: u64,
    pub per_sec: f64,
}

/// Fixed load shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub threads: u32,
    pub connections: u32,
    /// Concurrent streams per connection (h2load only).
    pub streams: u32,
    pub duration: Duration,
}

/// `wrk` against `addr` with `host`.
pub fn wrk(bin: &Path, addr: SocketAddr, host: &str, shape: Shape) -> Result<Outcome> {
    let out = Command::new(bin)
        .arg(format!("-t{}", shape.threads.min(shape.connections)))
        .arg(format!("-c{}", shape.connections))
        .arg(format!("-d{}s", shape.duration.as_secs().max(1)))
        .arg("-H")
        .arg(format!("Host: {host}"))
        .arg(format!("http://{addr}/"))
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk exited with {}: {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<Outcome> {
    let mut requests = None;
    let mut per_sec = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            per_sec = rest.trim().parse::<f64>().ok();
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            bail!("wrk: {line} (the target answered errors)\n{text}");
        } else if line.starts_with("Socket errors:") && socket_errors(line) > 0 {
            bail!("wrk: {line}\n{text}");
        }
    }
    match (requests, per_sec) {
        (Some(requests), Some(per_sec)) if requests > 0 => Ok(Outcome { requests, per_sec }),
        _ => bail!("wrk printed no request count or rate:\n{text}"),
    }
}

/// The sum of the counts in `Socket errors: connect 0, read 0, write 0,
/// timeout 0`.
fn socket_errors(line: &str) -> u64 {
    line.split(',')
        .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// `h2load` (h2c, prior knowledge) against `addr` with `:authority` `host`.
pub fn h2load(bin: &Path, addr: SocketAddr, host: &str, shape: Shape) -> Result<Outcome> {
    let out = Command::new(bin)
        .arg(format!(
            "--threads={}",
            shape.threads.min(shape.connections)
        ))
        .arg(format!("--clients={}", shape.connections))
        .arg(format!("--max-concurrent-streams={}", shape.streams))
        .arg(format!("--duration={}", shape.duration.as_secs().max(1)))
        .arg(format!("--header=:authority: {host}"))
        .arg(format!("http://{addr}/"))
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load exited with {}: {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_h2load(&text)
}

fn parse_h2load(text: &str) -> Result<Outcome> {
    let mut per_sec = None;
    let mut requests = None;
    let mut ok = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 5.00s, 41234.40 req/s, 3.2MB/s
            per_sec = rest
                .split(',')
                .nth(1)
                .and_then(|r| r.trim().strip_suffix(" req/s"))
                .and_then(|r| r.trim().parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests:") {
            // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            let count = |what: &str| -> Option<u64> {
                rest.split(',').find_map(|part| {
                    let mut w = part.split_whitespace();
                    let n = w.next()?.parse().ok()?;
                    (w.next()? == what).then_some(n)
                })
            };
            let (done, succeeded) = (count("done"), count("succeeded"));
            let bad = count("failed").unwrap_or(0)
                + count("errored").unwrap_or(0)
                + count("timeout").unwrap_or(0);
            if bad > 0 || done != succeeded {
                bail!("h2load: {line}\n{text}");
            }
            requests = succeeded;
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            // status codes: N 2xx, N 3xx, N 4xx, N 5xx
            let non_2xx: u64 = rest
                .split(',')
                .filter(|p| !p.trim_end().ends_with("2xx"))
                .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            if non_2xx > 0 {
                bail!("h2load: {line} (the target answered errors)\n{text}");
            }
            ok = true;
        }
    }
    match (requests, per_sec) {
        (Some(requests), Some(per_sec)) if requests > 0 && ok => Ok(Outcome { requests, per_sec }),
        _ => bail!("h2load printed no successful requests:\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:1/\n  2 threads and 32 connections\n  \
        Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.00ms  1.00ms  10.00ms   90.00%\n    \
        Req/Sec    10.00k     1.00k   12.00k    70.00%\n  100000 requests in 5.00s, 20.00MB read\n\
        Requests/sec:  20000.00\nTransfer/sec:      4.00MB\n";

    #[test]
    fn parses_wrk() {
        let o = parse_wrk(WRK).unwrap();
        assert_eq!(o.requests, 100_000);
        assert_eq!(o.per_sec, 20_000.0);
        let bad = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 5\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
        let errs = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 2, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&errs).is_err());
        let none = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 0, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&none).is_ok());
    }

    const H2: &str = "finished in 5.00s, 41234.40 req/s, 3.20MB/s\n\
        requests: 206172 total, 206236 started, 206172 done, 206172 succeeded, 0 failed, 0 errored, 0 timeout\n\
        status codes: 206172 2xx, 0 3xx, 0 4xx, 0 5xx\n";

    #[test]
    fn parses_h2load() {
        let o = parse_h2load(H2).unwrap();
        assert_eq!(o.requests, 206_172);
        assert_eq!(o.per_sec, 41_234.4);
        assert!(parse_h2load(&H2.replace("0 4xx", "3 4xx")).is_err());
        assert!(parse_h2load(&H2.replace("0 failed", "1 failed")).is_err());
    }
}
