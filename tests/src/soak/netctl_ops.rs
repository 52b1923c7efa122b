//! What the soak does to netctl: policies naming domains swapped through
//! its API (and the sandbox removed and put back now and then) while the
//! DNS records of those domains change under it.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::http::{parse, Reply};
use crate::netctl_support::{Dns, V4_A, V4_B, V4_C, V4_D, V6_A, V6_B};

/// The names policies use; dnsmasq always answers all of them (a policy
/// naming one that does not resolve is refused, by design).
pub const NAMES: [&str; 3] = ["a.soak.test", "b.soak.test", "c.soak.test"];
const SANDBOX: &str = "soak";

/// The daemon's API over its unix socket, every failure an error.
pub struct NetctlTarget {
    pub socket: PathBuf,
    /// The sandbox namespace policies apply to.
    pub netns: String,
}

impl NetctlTarget {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Reply> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .context("socket timeout")?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: netctl\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).context("send request")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).context("read answer")?;
        parse(&raw).with_context(|| format!("{method} {path}"))
    }

    fn put(&self, network: &str) -> Result<()> {
        let body = format!(r#"{{"netns":"{}","network":{network}}}"#, self.netns);
        self.call("PUT", &format!("/v1/sandboxes/{SANDBOX}"), Some(&body))?
            .expect(200, &format!("PUT {network}"))?;
        Ok(())
    }
}

/// Policy `i` of a cycle: domains in both lists, allowlists, CIDRs, none.
fn policy(i: u64) -> String {
    let [a, b, c] = NAMES;
    match i % 5 {
        0 => format!(r#"{{"allow_out": ["{a}"], "deny_out": ["{b}", "203.0.113.0/24"]}}"#),
        1 => format!(
            r#"{{"allow_internet_access": false, "allow_out": ["{a}", "{c}", "198.51.100.0/28"]}}"#
        ),
        2 => format!(r#"{{"deny_out": ["{c}", "2001:db8:2::/112"]}}"#),
        3 => "null".to_owned(),
        _ => format!(r#"{{"allow_out": ["{b}"], "deny_out": ["{a}", "{c}"]}}"#),
    }
}

/// One policy change; every 7th removes the sandbox's rules first and
/// every 5th reads the sandbox back.
pub fn policy_churn(t: &NetctlTarget, i: u64) -> Result<()> {
    let path = format!("/v1/sandboxes/{SANDBOX}");
    if i % 7 == 6 {
        let r = t.call("DELETE", &path, None)?;
        anyhow::ensure!(
            matches!(r.status, 200 | 204),
            "DELETE {path}: {} {}",
            r.status,
            r.text()
        );
    }
    t.put(&policy(i))?;
    if i % 5 == 4 {
        let view = t.call("GET", &path, None)?.expect(200, "show")?.json()?;
        anyhow::ensure!(view.get("counters").is_some(), "no counters in {view}");
    }
    Ok(())
}

/// New answers for every name, then dnsmasq re-reads them (SIGHUP).
pub fn dns_change(dns: &Dns, i: u64) -> Result<()> {
    const POOL: [&str; 6] = [V4_A, V4_B, V4_C, V4_D, V6_A, V6_B];
    let records: Vec<(&str, &str)> = NAMES
        .iter()
        .enumerate()
        .flat_map(|(n, name)| {
            let first = (i as usize + n) % POOL.len();
            [
                (POOL[first], *name),
                (POOL[(first + 3) % POOL.len()], *name),
            ]
        })
        .collect();
    dns.set_records(&records);
    Ok(())
}
