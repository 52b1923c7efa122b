//! Applying batches and reading counters with `nft`, inside a namespace.
//!
//! The nftables crate serialises our typed batch to JSON and nft commits
//! it as one kernel transaction: through the namespace's long-lived
//! session (`session`) for applies and the listing they read, or a
//! one-shot `nft -j -f -` elsewhere. No request data ever reaches nft as
//! text.

mod session;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nftables::schema::Nftables;

use crate::netns::{self, NetnsError};
use crate::ruleset::{
    COUNTER_ACCEPTED, COUNTER_FAST, COUNTER_INBOUND_REFUSED, COUNTER_REFUSED, TABLE,
};
use session::{SessionError, Sessions};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("nft in {netns}: {message}")]
    Nft { netns: PathBuf, message: String },
}

/// How nft ended when it did not succeed.
#[derive(Debug)]
enum RunError {
    /// nft ran and refused (for a listing: usually "no such table").
    Failed(String),
    /// nft could not be run at all.
    Spawn(String),
}

/// How nft (libnftables' strerror(ENOENT)) says a table or chain is not there.
const NFT_NOT_FOUND: &str = "No such file or directory";

/// How to call nft.
#[derive(Clone)]
pub struct Nft {
    program: String,
    /// Long-lived nft per namespace for applies; `None`: one `nft` per call.
    sessions: Option<Arc<Sessions>>,
}

impl std::fmt::Debug for Nft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nft")
            .field("program", &self.program)
            .field("sessions", &self.sessions.is_some())
            .finish()
    }
}

/// Packets our rules accepted and refused (named counters; they survive
/// re-applies of the same table). `accepted` and `refused` count what the
/// sandbox sent and the sets judged, `accepted_fast` what it sent on
/// connections already judged under the policy in force, and
/// `inbound_refused` what was sent to it and refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub accepted: u64,
    #[serde(default)]
    pub accepted_fast: u64,
    pub refused: u64,
    #[serde(default)]
    pub inbound_refused: u64,
}

impl Nft {
    /// One `nft` process per call.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            sessions: None,
        }
    }

    /// Applies and rule listings go through a long-lived nft per namespace,
    /// closed after `idle` without use, at most `max` at once (see
    /// `session` for why).
    pub fn with_sessions(program: impl Into<String>, idle: Duration, max: usize) -> Self {
        let program = program.into();
        Self {
            sessions: Some(Sessions::new(program.clone(), idle, max)),
            program,
        }
    }

    /// Closes the session in the namespace at `netns`, if any: a session's
    /// nft keeps its namespace alive. It exits moments later, off this path.
    pub async fn release(&self, netns: &Path) {
        let Some(sessions) = self.sessions.clone() else {
            return;
        };
        let path = netns.to_path_buf();
        if let Err(e) = tokio::task::spawn_blocking(move || sessions.release(&path)).await {
            tracing::warn!(netns = %netns.display(), error = %e, "closing the nft session failed");
        }
    }

    /// Runs `inputs` in order through the namespace's session; the
    /// answers of all of them, or the first refusal.
    async fn through_session(
        &self,
        sessions: &Arc<Sessions>,
        netns: &Path,
        inputs: Vec<String>,
    ) -> Result<Result<Vec<String>, SessionError>, NftError> {
        let sessions = sessions.clone();
        let path = netns.to_path_buf();
        let program = self.program.clone();
        Ok(netns::run_in(netns, move || {
            // The namespace this thread is in, not what the path names by
            // now: a session must never serve another namespace.
            let identity = netns::identity(Path::new("/proc/thread-self/ns/net"))
                .ok_or_else(|| SessionError::Broken("cannot identify the namespace".into()))?;
            let slot = sessions.slot(identity, &path);
            // This thread is in the namespace, so a one-shot nft is too.
            let one_shot = |json: &str| {
                run(&program, &["-j", "-t", "-f", "-"], Some(json.to_owned())).map_err(
                    |e| match e {
                        RunError::Failed(m) => SessionError::Refused(m),
                        RunError::Spawn(m) => SessionError::Broken(m),
                    },
                )
            };
            session::run_batches(&sessions, &slot, &inputs, one_shot)
        })
        .await?)
    }

    /// Commits `batch` in the namespace as one transaction.
    pub async fn apply(&self, netns: &Path, batch: &Nftables<'_>) -> Result<(), NftError> {
        self.apply_in_order(netns, &[batch]).await
    }

    /// Commits each batch as its own transaction, in order, from one visit
    /// to the namespace; stops at the first that fails.
    pub async fn apply_in_order(
        &self,
        netns: &Path,
        batches: &[&Nftables<'_>],
    ) -> Result<(), NftError> {
        let ns = netns.to_path_buf();
        let mut inputs = Vec::with_capacity(batches.len());
        for batch in batches {
            inputs.push(serde_json::to_string(batch).map_err(|e| NftError::Nft {
                netns: ns.clone(),
                message: format!("serialise batch: {e}"),
            })?);
        }
        if let Some(sessions) = &self.sessions {
            return self
                .through_session(sessions, netns, inputs)
                .await?
                .map(drop)
                .map_err(|e| NftError::Nft {
                    netns: ns,
                    message: match e {
                        SessionError::Refused(m) | SessionError::Broken(m) => m,
                    },
                });
        }
        let program = self.program.clone();
        netns::run_in(netns, move || {
            inputs
                .into_iter()
                .try_for_each(|json| run(&program, &["-j", "-f", "-"], Some(json)).map(drop))
        })
        .await?
        .map_err(|e| NftError::Nft {
            netns: ns,
            message: match e {
                RunError::Failed(m) | RunError::Spawn(m) => m,
            },
        })
    }

    /// Commits `batch` in netctl's own namespace (the host table). Runs on
    /// a blocking-pool thread, which never changes namespace.
    pub async fn apply_here(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
        let json = serde_json::to_string(batch).map_err(|e| NftError::Nft {
            netns: own_netns(),
            message: format!("serialise batch: {e}"),
        })?;
        let program = self.program.clone();
        tokio::task::spawn_blocking(move || run(&program, &["-j", "-f", "-"], Some(json)))
            .await
            .map_err(|e| NetnsError::Thread(e.to_string()))?
            .map(drop)
            .map_err(|e| NftError::Nft {
                netns: own_netns(),
                message: match e {
                    RunError::Failed(m) | RunError::Spawn(m) => m,
                },
            })
    }

    /// Whether `inet <table>` exists in netctl's own namespace.
    pub async fn exists_here(&self, table: &'static str) -> Result<bool, NftError> {
        let program = self.program.clone();
        match tokio::task::spawn_blocking(move || {
            run(&program, &["list", "table", "inet", table], None)
        })
        .await
        .map_err(|e| NetnsError::Thread(e.to_string()))?
        {
            Ok(_) => Ok(true),
            Err(RunError::Failed(_)) => Ok(false),
            Err(RunError::Spawn(message)) => Err(NftError::Nft {
                netns: own_netns(),
                message,
            }),
        }
    }

    /// Reads our named counters; `None` when our table is not there.
    pub async fn counters(&self, netns: &Path) -> Result<Option<Counters>, NftError> {
        let Some(raw) = self
            .list(netns, &["-j", "list", "counters", "table", "inet", TABLE])
            .await?
        else {
            return Ok(None);
        };
        parse_counters(&raw)
            .map(Some)
            .map_err(|message| NftError::Nft {
                netns: netns.to_path_buf(),
                message,
            })
    }

    /// Our table's rules as nft prints them in JSON, without set contents
    /// (`-t`): which sets the rules point at. `None` when our table is not
    /// there. Only a missing table counts as `None`: any other failure
    /// would make us guess which copies are live.
    pub async fn list_rules(&self, netns: &Path) -> Result<Option<String>, NftError> {
        // As a JSON command, like every batch of ours.
        let json =
            serde_json::to_string(&crate::ruleset::list_rules()).map_err(|e| NftError::Nft {
                netns: netns.to_path_buf(),
                message: format!("serialise listing: {e}"),
            })?;
        if let Some(sessions) = &self.sessions {
            return match self.through_session(sessions, netns, vec![json]).await? {
                Ok(mut answers) => {
                    let answer = answers.pop().unwrap_or_default();
                    listing_line(&answer)
                        .map(Some)
                        .ok_or_else(|| NftError::Nft {
                            netns: netns.to_path_buf(),
                            message: format!(
                                "nft listed no table: {}",
                                first_line(&answer).chars().take(200).collect::<String>()
                            ),
                        })
                }
                Err(SessionError::Refused(m)) if m.contains(NFT_NOT_FOUND) => Ok(None),
                Err(SessionError::Refused(message) | SessionError::Broken(message)) => {
                    Err(NftError::Nft {
                        netns: netns.to_path_buf(),
                        message,
                    })
                }
            };
        }
        let program = self.program.clone();
        match netns::run_in(netns, move || {
            run(&program, &["-t", "-j", "-f", "-"], Some(json))
        })
        .await?
        {
            Ok(out) => Ok(Some(out)),
            Err(RunError::Failed(m)) if m.contains(NFT_NOT_FOUND) => Ok(None),
            Err(RunError::Failed(message) | RunError::Spawn(message)) => Err(NftError::Nft {
                netns: netns.to_path_buf(),
                message,
            }),
        }
    }

    /// The table as nft prints it (text), for tests and `show --rules`;
    /// `None` when our table is not there.
    pub async fn list_table(&self, netns: &Path) -> Result<Option<String>, NftError> {
        self.list(netns, &["list", "table", "inet", TABLE]).await
    }

    async fn list(&self, netns: &Path, args: &[&'static str]) -> Result<Option<String>, NftError> {
        let program = self.program.clone();
        let args: Vec<&'static str> = args.to_vec();
        match netns::run_in(netns, move || run(&program, &args, None)).await? {
            Ok(out) => Ok(Some(out)),
            Err(RunError::Failed(_)) => Ok(None),
            Err(RunError::Spawn(message)) => Err(NftError::Nft {
                netns: netns.to_path_buf(),
                message,
            }),
        }
    }
}

/// How errors name netctl's own namespace.
fn own_netns() -> PathBuf {
    PathBuf::from("/proc/self/ns/net")
}

/// Runs nft on the current thread (which has entered the namespace), with
/// all three streams piped so its complaints end up in our error.
fn run(program: &str, args: &[&str], stdin: Option<String>) -> Result<String, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::Spawn(format!("run {program}: {e}")))?;
    // Written from another thread so a large batch cannot deadlock against
    // nft filling its output pipes.
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => Some(std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        })),
        _ => None,
    };
    let output = child
        .wait_with_output()
        .map_err(|e| RunError::Spawn(format!("wait for {program}: {e}")))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if output.status.success() {
        return String::from_utf8(output.stdout)
            .map_err(|e| RunError::Failed(format!("output not UTF-8: {e}")));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(RunError::Failed(format!(
        "{} ({})",
        first_line(&stderr),
        output.status
    )))
}

/// The line of an nft answer that is its JSON listing (it starts with
/// nft's `metainfo`), and nothing else nft may have written: a build with
/// GNU readline echoes its input, our request among it.
fn listing_line(answer: &str) -> Option<String> {
    answer
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{') && l.contains("\"metainfo\""))
        .find(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .map(str::to_owned)
}

/// The first non-empty line a tool wrote to stderr: what our errors quote.
pub(crate) fn first_line(stderr: &str) -> &str {
    stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no error message")
}

fn parse_counters(raw: &str) -> Result<Counters, String> {
    let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    let mut counters = Counters::default();
    let objects = value["nftables"]
        .as_array()
        .ok_or_else(|| "no nftables array".to_owned())?;
    for obj in objects {
        let Some(counter) = obj.get("counter") else {
            continue;
        };
        let packets = counter["packets"].as_u64().unwrap_or(0);
        match counter["name"].as_str() {
            Some(COUNTER_ACCEPTED) => counters.accepted = packets,
            Some(COUNTER_FAST) => counters.accepted_fast = packets,
            Some(COUNTER_REFUSED) => counters.refused = packets,
            Some(COUNTER_INBOUND_REFUSED) => counters.inbound_refused = packets,
            _ => {}
        }
    }
    Ok(counters)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_listing_is_the_line_nft_wrote() {
        let answer = "nft> {\"nftables\":[{\"list\":{\"table\":{\"family\":\"inet\",\"name\":\"t\"}}}]}\n{\"nftables\": [{\"metainfo\": {\"version\": \"1.0.6\"}}, {\"table\": {\"family\": \"inet\", \"name\": \"t\"}}]}\n";
        let line = super::listing_line(answer).unwrap();
        assert!(line.starts_with("{\"nftables\": [{\"metainfo\""), "{line}");
        assert!(super::listing_line("Error: nothing\n").is_none());
    }

    #[test]
    fn parses_named_counters() {
        let raw = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "inet", "name": "accepted", "table": "sbx_netctl", "handle": 1, "packets": 7, "bytes": 420}},
            {"counter": {"family": "inet", "name": "refused", "table": "sbx_netctl", "handle": 2, "packets": 3, "bytes": 180}},
            {"counter": {"family": "inet", "name": "inbound_refused", "table": "sbx_netctl", "handle": 3, "packets": 4, "bytes": 240}}]}"#;
        let c = super::parse_counters(raw).unwrap();
        assert_eq!((c.accepted, c.refused, c.inbound_refused), (7, 3, 4));
    }
}
