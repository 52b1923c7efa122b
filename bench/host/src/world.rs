//! The world sbx-host runs in for the bench, as the integration tests
//! build it (tests/src/host_support.rs), with the bench's own names:
//!
//! ```text
//!  sandboxes (netctl-made) ─veth─ host ns: netctl, sbx-host  192.0.2.130 ─veth─ 192.0.2.129  internet ns
//! ```
//!
//! netctl and sbx-host run in the host namespace (`nsenter --net`, so the
//! namespaces netctl bind-mounts are visible here too), sbx-host with its
//! own state directory (in the scratch directory), its own cgroup and
//! `accel = "auto"` (KVM where a probe guest runs, else TCG). Nothing
//! leaves the namespaces the bench made: the host's only uplink leads to
//! the bench's "internet" namespace, which has nothing behind it.
//!
//! Torn down on drop, in order, also after an error: every sandbox deleted
//! through sbx-host, sbx-host stopped, every process left in the bench's
//! cgroups killed (guests, agents, floors), netctl stopped, whatever
//! namespace carries this run's prefix deleted, then the bench's own
//! namespaces.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sbx_bench_support::child::Spawned;
use sbx_bench_support::scratch::Scratch;
use serde_json::{json, Value};

use crate::rig::{self, Api, Cgroup, Netns, PrefixCleanup};

/// The host's uplink and the internet's end of it.
const HOST_V4: &str = "192.0.2.130/25";
const INTERNET_V4: &str = "192.0.2.129";

/// What the world is made of.
pub struct Bins {
    pub sbx_host: PathBuf,
    pub netctl: PathBuf,
    pub agent: PathBuf,
    pub qemu: PathBuf,
    pub nsenter: PathBuf,
    pub images_dir: PathBuf,
    pub image: String,
}

pub struct World {
    sbx_host: Option<Spawned>,
    /// `<cgroup2>/hbench-<pid>`: sbx-host's sandboxes under `host/`, the
    /// floors under `floor/`.
    pub cgroups: Cgroup,
    netctl: Spawned,
    _leftovers: PrefixCleanup,
    pub host_ns: Netns,
    _internet: Netns,
    pub host: Api,
    pub netctl_api: Api,
    pub state_dir: PathBuf,
    pub host_log: PathBuf,
    pub netctl_prefix: String,
}

/// A sandbox sbx-host created: its answer and how long the create took.
pub struct Created {
    pub id: String,
    pub took: Duration,
    pub answer: Value,
}

impl Created {
    pub fn accel(&self) -> Option<String> {
        self.answer["accel"].as_str().map(str::to_owned)
    }

    pub fn vmm_pid(&self) -> Result<u32> {
        self.answer["vmm_pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("{}: no vmm_pid in {}", self.id, self.answer))
    }
}

fn toml_str(p: &Path) -> Result<String> {
    let s = p.to_str().context("a path that is not UTF-8")?;
    if s.contains(['"', '\\', '\n', ',']) {
        bail!("{s}: the bench needs paths without quotes, backslashes, commas or newlines");
    }
    Ok(format!("\"{s}\""))
}

impl World {
    pub fn start(bins: &Bins, scratch: &Scratch) -> Result<Self> {
        // Declared in teardown order reversed: on an error below, locals
        // drop last-first, which is the order `World` drops its fields in.
        let internet = Netns::new("hbi")?;
        let host_ns = Netns::new("hbh")?;
        let (uplink, _) = rig::link(&host_ns, HOST_V4, &internet, &format!("{INTERNET_V4}/25"))?;
        host_ns.ip(&["route", "add", "default", "via", INTERNET_V4])?;
        let netctl_prefix = format!("hbx{}x-", std::process::id() % 100_000);
        let leftovers = PrefixCleanup(netctl_prefix.clone());

        let dir = scratch.dir();
        let netctl_socket = dir.join("netctl.sock");
        let netctl_config = dir.join("netctl.toml");
        fs::write(
            &netctl_config,
            format!(
                "[dns]\nupstreams = [\"{INTERNET_V4}\"]\n\
                 [setup]\nnetns_prefix = \"{netctl_prefix}\"\nhost_iface_prefix = \"hbs\"\nuplink = \"{uplink}\"\n"
            ),
        )?;
        let mut netctl = Spawned::start(
            "netctl",
            &bins.nsenter,
            [
                format!("--net={}", host_ns.path().display()).into(),
                bins.netctl.clone().into_os_string(),
                "--socket".into(),
                netctl_socket.clone().into_os_string(),
                "serve".into(),
                "--config".into(),
                netctl_config.into_os_string(),
                "--state-dir".into(),
                dir.join("netctl-state").into_os_string(),
            ],
            &scratch.log("netctl"),
        )?;
        netctl
            .wait_for_line("netctl listening on ", Duration::from_secs(30))
            .with_context(|| {
                format!(
                    "netctl did not start: {}",
                    rig::tail(&scratch.log("netctl"), 10)
                )
            })?;

        let cgroups =
            Cgroup::create(rig::cgroup2_mount()?.join(format!("hbench-{}", std::process::id())))?;
        let state_dir = dir.join("state");
        let socket = dir.join("sbx-host.sock");
        let config = dir.join("sbx-host.toml");
        fs::write(
            &config,
            format!(
                "socket = {sock}\nstate_dir = {state}\nnetctl_socket = {netctl}\n\
                 images_dir = {images}\ndefault_image = \"{image}\"\n\
                 # The KVM-or-TCG probe runs at start, not in the first create.\n\
                 default_runtime = \"microvm\"\ncgroup_dir = {cg}\n\
                 boot_timeout_secs = 120\nguest_dns = [\"{INTERNET_V4}\"]\n\
                 [capacity]\ncpus = 64.0\nmemory_mb = 1048576\n\
                 [microvm]\nqemu = {qemu}\naccel = \"auto\"\n\
                 [process]\nagent = {agent}\n",
                sock = toml_str(&socket)?,
                state = toml_str(&state_dir)?,
                netctl = toml_str(&netctl_socket)?,
                images = toml_str(&bins.images_dir)?,
                image = bins.image,
                cg = toml_str(&cgroups.path.join("host"))?,
                qemu = toml_str(&bins.qemu)?,
                agent = toml_str(&bins.agent)?,
            ),
        )?;
        let host_log = scratch.log("sbx-host");
        let mut sbx_host = Spawned::start(
            "sbx-host",
            &bins.nsenter,
            [
                format!("--net={}", host_ns.path().display()).into(),
                bins.sbx_host.clone().into_os_string(),
                "serve".into(),
                "--config".into(),
                config.into_os_string(),
            ],
            &host_log,
        )?;
        sbx_host
            .wait_for_line("sbx-host listening on ", Duration::from_secs(120))
            .with_context(|| format!("sbx-host did not start: {}", rig::tail(&host_log, 10)))?;
        Ok(Self {
            sbx_host: Some(sbx_host),
            cgroups,
            netctl,
            _leftovers: leftovers,
            host_ns,
            _internet: internet,
            host: Api {
                name: "sbx-host",
                socket,
            },
            netctl_api: Api {
                name: "netctl",
                socket: netctl_socket,
            },
            state_dir,
            host_log,
            netctl_prefix,
        })
    }

    /// `POST /v1/sandboxes`, timed from the request to the 201.
    pub fn create(&self, id: &str, runtime: &str, cpus: f64, memory_mb: u64) -> Result<Created> {
        rig::check_interrupted()?;
        let body = json!({"id": id, "runtime": runtime, "cpus": cpus, "memory_mb": memory_mb});
        let started = Instant::now();
        let (status, answer) = self
            .host
            .call("POST", "/v1/sandboxes", Some(&body.to_string()))?;
        let took = started.elapsed();
        if status != 201 {
            bail!(
                "create {id} ({runtime}): {status} {answer}\nsbx-host log:\n{}",
                rig::tail(&self.host_log, 30)
            );
        }
        Ok(Created {
            id: id.to_owned(),
            took,
            answer,
        })
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        self.host
            .expect("DELETE", &format!("/v1/sandboxes/{id}"), None, 204)
            .map(|_| ())
            .with_context(|| format!("sbx-host log:\n{}", rig::tail(&self.host_log, 20)))
    }

    /// `POST /v1/sandboxes/{id}/{suspend,resume}`, timed; with the answer.
    pub fn lifecycle(&self, id: &str, action: &str) -> Result<(Duration, Value)> {
        rig::check_interrupted()?;
        let started = Instant::now();
        let v = self
            .host
            .expect("POST", &format!("/v1/sandboxes/{id}/{action}"), None, 200)
            .with_context(|| format!("sbx-host log:\n{}", rig::tail(&self.host_log, 30)))?;
        Ok((started.elapsed(), v))
    }

    /// The sandbox's cgroup (sbx-host makes one per sandbox).
    pub fn sandbox_cgroup(&self, id: &str) -> PathBuf {
        self.cgroups.path.join("host").join(id)
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("sandboxes").join(id)
    }

    /// sbx-host's log line saying which accelerator it chose, and why.
    pub fn accel_log_line(&self) -> Option<String> {
        let text = rig::strip_ansi(&fs::read_to_string(&self.host_log).ok()?);
        text.lines().find(|l| l.contains("accelerator:")).map(|l| {
            // Drop the timestamp: the level onwards.
            let l = l.trim();
            ["WARN", "INFO"]
                .iter()
                .find_map(|lvl| l.find(lvl).map(|i| &l[i..]))
                .unwrap_or(l)
                .to_owned()
        })
    }

    /// Fails if a daemon died: a figure measured against a dead process
    /// means nothing.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.netctl.ensure_running()?;
        if let Some(h) = self.sbx_host.as_mut() {
            h.ensure_running()?;
        }
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.sbx_host.is_some() {
            if let Ok((200, list)) = self.host.call("GET", "/v1/sandboxes", None) {
                let ids: Vec<String> = list["sandboxes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for id in ids {
                    let _ = self
                        .host
                        .call("DELETE", &format!("/v1/sandboxes/{id}"), None);
                }
            }
        }
        // Then the fields, in order: sbx-host, the cgroups (anything left in
        // them is killed), netctl, its leftover namespaces, ours.
    }
}
