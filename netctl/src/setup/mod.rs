//! Sandbox network setup: the namespace, a veth pair (host end in netctl's
//! own namespace, `eth0` inside), addresses from the pools, default routes,
//! optionally a tap device with forwarding and the NAT of the microVM guest
//! behind it, and the host table.
//!
//! No `ip` is run: namespaces are made with unshare(2) and a bind mount,
//! everything else over rtnetlink. The sandbox side runs on one dedicated
//! thread that enters (or creates) the namespace and opens its netlink
//! socket there, because a netlink socket acts in the namespace it was
//! opened in. The same thread opens the host-side socket first, before it
//! leaves netctl's namespace, so one thread and two sockets make a whole
//! sandbox.
//!
//! Every step can be repeated and finds what an earlier, interrupted run
//! left: that is what makes a crash at any point recoverable from the plan
//! saved before the first step.

pub mod guest_table;
pub mod host_table;
pub mod links;
pub mod netns_fs;
pub mod plan;
pub mod tap;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::nft::{Nft, NftError};
pub use links::LinkError;
pub use netns_fs::NetnsFsError;
pub use plan::{Guest, Layout, Plan, SANDBOX_IFACE};
pub use tap::TapError;

/// How far a saved setup got. `Creating` and `Deleting` mean the request
/// that wrote them never answered: on start such a setup is rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Creating,
    Ready,
    Deleting,
}

/// What the store keeps about a sandbox's setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSetup {
    pub plan: Plan,
    pub phase: Phase,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Fs(#[from] NetnsFsError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("open netlink connection: {0}")]
    Connect(std::io::Error),
    #[error("{0} is missing right after it was created")]
    Vanished(String),
    #[error("setup worker: {0}")]
    Thread(String),
    #[error("host table: {0}")]
    HostTable(#[source] NftError),
    #[error("guest table: {0}")]
    GuestTable(#[source] NftError),
    #[error("no free slot: the pools have room for {0} sandboxes")]
    Full(u32),
    #[error("slot {slot} is already taken by sandbox {other:?}")]
    SlotTaken { slot: u32, other: String },
}

/// Which slots are taken and whether the host table is in.
#[derive(Debug, Default)]
struct HostState {
    slots: BTreeMap<u32, String>,
    table: bool,
    dir_ready: bool,
}

pub struct Setup {
    layout: Layout,
    /// nft in netctl's own namespace (the host table).
    nft: Nft,
    /// nft in sandboxes' namespaces (the guest table): the manager's, so
    /// it shares the namespace's session with the policy's applies.
    sandbox_nft: Nft,
    /// The port the guest's agent is reached on (`[ingress] port`).
    agent_port: u16,
    /// Serialises slot changes with host-table changes, so the table is
    /// never removed while a setup that needs it is being made.
    host: Mutex<HostState>,
}

impl Setup {
    pub fn new(layout: Layout, nft: Nft, sandbox_nft: Nft, agent_port: u16) -> Self {
        Self {
            layout,
            nft,
            sandbox_nft,
            agent_port,
            host: Mutex::new(HostState::default()),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A free slot for `id` (the lowest), now taken.
    pub async fn reserve(&self, id: &str) -> Result<u32, SetupError> {
        let mut host = self.host.lock().await;
        if let Some((slot, _)) = host.slots.iter().find(|(_, owner)| *owner == id) {
            return Ok(*slot);
        }
        let mut free = 0;
        for &taken in host.slots.keys() {
            if taken != free {
                break;
            }
            free += 1;
        }
        if free >= self.layout.slots {
            return Err(SetupError::Full(self.layout.slots));
        }
        host.slots.insert(free, id.to_owned());
        Ok(free)
    }

    /// Takes the slot a saved sandbox had (on start).
    pub async fn claim(&self, id: &str, slot: u32) -> Result<(), SetupError> {
        let mut host = self.host.lock().await;
        match host.slots.get(&slot) {
            Some(other) if other != id => Err(SetupError::SlotTaken {
                slot,
                other: other.clone(),
            }),
            _ => {
                host.slots.insert(slot, id.to_owned());
                Ok(())
            }
        }
    }

    /// Gives the slot back; the last one out removes the host table.
    pub async fn release(&self, id: &str, slot: u32) {
        let mut host = self.host.lock().await;
        if host.slots.get(&slot).is_some_and(|owner| owner == id) {
            host.slots.remove(&slot);
        }
        self.drop_table_unless_needed(&mut host, id).await;
    }

    /// Removes the host table if `id` (being deleted) is the only setup
    /// sandbox left, so a DELETE can do it while the veth goes, instead of
    /// after. A create arriving meanwhile waits for the lock and puts the
    /// table back before it makes its own veth.
    pub async fn drop_table_if_last(&self, id: &str) {
        let mut host = self.host.lock().await;
        self.drop_table_unless_needed(&mut host, id).await;
    }

    async fn drop_table_unless_needed(&self, host: &mut HostState, leaving: &str) {
        if !host.table || host.slots.values().any(|owner| owner != leaving) {
            return;
        }
        match self.nft.apply_here(&host_table::remove()).await {
            Ok(()) => {
                host.table = false;
                info!(
                    table = host_table::TABLE,
                    "host table removed (no setup sandbox left)"
                );
            }
            Err(e) => warn!(error = %e, "host table not removed"),
        }
    }

    /// The host table (once), the namespace directory as a shared mount,
    /// and forwarding in netctl's namespace when there is an uplink.
    pub async fn ensure_host(&self) -> Result<(), SetupError> {
        let mut host = self.host.lock().await;
        if !host.dir_ready {
            netns_fs::prepare_dir(&self.layout.netns_dir)?;
            host.dir_ready = true;
        }
        if host.table {
            return Ok(());
        }
        self.nft
            .apply_here(&host_table::full(&self.layout))
            .await
            .map_err(SetupError::HostTable)?;
        if self.layout.uplink.is_some() {
            netns_fs::enable_sysctl("ipv4/ip_forward")?;
            if self.layout.ipv6_pool.is_some() {
                netns_fs::enable_sysctl("ipv6/conf/all/forwarding")?;
            }
        }
        host.table = true;
        info!(table = host_table::TABLE, "host table in place");
        Ok(())
    }

    /// On start with no setup sandbox: a host table a crash left behind
    /// goes. Listing first keeps a daemon that never made one from touching
    /// the ruleset at all.
    pub async fn remove_stale_host_table(&self) {
        let host = self.host.lock().await;
        if !host.slots.is_empty() || host.table {
            return;
        }
        match self.nft.exists_here(host_table::TABLE).await {
            Ok(true) => match self.nft.apply_here(&host_table::remove()).await {
                Ok(()) => info!(table = host_table::TABLE, "stale host table removed"),
                Err(e) => warn!(error = %e, "stale host table not removed"),
            },
            Ok(false) => {}
            Err(e) => debug!(error = %e, "could not check for a stale host table"),
        }
    }

    /// Makes (or completes, or repairs) everything in `plan`. `stale_tap`
    /// is a tap an earlier version of the sandbox had and this one does not.
    pub async fn create(&self, plan: &Plan, stale_tap: Option<String>) -> Result<(), SetupError> {
        let dropping_tap = plan.tap.is_none() && stale_tap.is_some();
        let links = plan.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netctl-setup".into())
            .spawn(move || {
                let _ = tx.send(build_on_this_thread(&links, stale_tap.as_deref()));
            })
            .map_err(|e| SetupError::Thread(e.to_string()))?;
        rx.await
            .map_err(|_| SetupError::Thread("ended without an answer".into()))??;
        // Rewritten on every repair, like the links: the batch replaces the
        // table whole. Removed only when the tap goes: a sandbox that never
        // had one costs no nft run.
        let batch = match (&plan.tap, &plan.guest) {
            (Some(_), Some(guest)) => guest_table::full(plan, guest, self.agent_port),
            _ if dropping_tap => guest_table::remove(),
            _ => return Ok(()),
        };
        self.sandbox_nft
            .apply(&plan.netns_path, &batch)
            .await
            .map_err(SetupError::GuestTable)
    }

    /// Removes what `plan` made, whatever of it exists: the veth pair
    /// (deleting the host end takes `eth0` with it at once) and the
    /// namespace mount. The namespace, with the tap and our rules in it,
    /// dies with its last user.
    pub async fn teardown(&self, plan: &Plan) -> Result<(), SetupError> {
        let started = std::time::Instant::now();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(SetupError::Connect)?;
        let driver = tokio::spawn(conn);
        let deleted = links::delete(&handle, &plan.host_iface).await;
        drop(handle);
        driver.abort();
        deleted?;
        let link_us = started.elapsed().as_micros() as u64;
        let path = plan.netns_path.clone();
        tokio::task::spawn_blocking(move || netns_fs::remove(&path))
            .await
            .map_err(|e| SetupError::Thread(e.to_string()))??;
        debug!(netns = %plan.netns, link_us, total_us = started.elapsed().as_micros() as u64, "torn down");
        Ok(())
    }
}

/// Runs on a fresh thread: opens the host-side netlink socket while the
/// thread is still in netctl's namespace, then creates or enters the
/// sandbox's namespace and opens the sandbox-side socket there.
fn build_on_this_thread(plan: &Plan, stale_tap: Option<&str>) -> Result<(), SetupError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(SetupError::Connect)?;
    let host = {
        let _context = runtime.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(SetupError::Connect)?;
        runtime.spawn(conn);
        handle
    };
    let path = plan.netns_path.as_path();
    let fresh = if netns_fs::is_mounted(path)? {
        netns_fs::enter(path)?;
        false
    } else {
        netns_fs::create_here(path)?;
        true
    };
    let netns = File::open(path).map_err(|source| NetnsFsError::Io {
        what: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let sandbox = {
        let _context = runtime.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(SetupError::Connect)?;
        runtime.spawn(conn);
        handle
    };
    runtime.block_on(configure(&host, &sandbox, plan, &netns, fresh, stale_tap))
}

async fn configure(
    host: &Handle,
    sandbox: &Handle,
    plan: &Plan,
    netns: &File,
    fresh: bool,
    stale_tap: Option<&str>,
) -> Result<(), SetupError> {
    let existing_host = links::index(host, &plan.host_iface).await?;
    let existing_inside = if fresh {
        None
    } else {
        links::index(sandbox, SANDBOX_IFACE).await?
    };
    let (host_index, inside_index) = match (existing_host, existing_inside) {
        (Some(h), Some(s)) => (h, s),
        (h, s) => {
            // Half a pair cannot be: these are ends of some other pair.
            if h.is_some() {
                links::delete(host, &plan.host_iface).await?;
            }
            if s.is_some() {
                links::delete(sandbox, SANDBOX_IFACE).await?;
            }
            links::add_veth(host, &plan.host_iface, SANDBOX_IFACE, netns.as_raw_fd()).await?;
            (
                links::index(host, &plan.host_iface)
                    .await?
                    .ok_or_else(|| SetupError::Vanished(plan.host_iface.clone()))?,
                links::index(sandbox, SANDBOX_IFACE)
                    .await?
                    .ok_or_else(|| SetupError::Vanished(SANDBOX_IFACE.into()))?,
            )
        }
    };

    // Up before addresses: the kernel adds the on-link prefix routes (which
    // the default routes need) only on an interface that is up.
    links::up(host, &plan.host_iface).await?;
    links::address(
        host,
        host_index,
        &plan.host_iface,
        IpNet::V4(plan.host_ipv4()),
    )
    .await?;
    if let Some(v6) = plan.host_ipv6() {
        links::address(host, host_index, &plan.host_iface, IpNet::V6(v6)).await?;
    }

    links::up(sandbox, "lo").await?;
    links::up(sandbox, SANDBOX_IFACE).await?;
    links::address(sandbox, inside_index, SANDBOX_IFACE, IpNet::V4(plan.ipv4)).await?;
    links::default_route(sandbox, inside_index, IpAddr::V4(plan.gateway4)).await?;
    if let (Some(v6), Some(gw6)) = (plan.ipv6, plan.gateway6) {
        links::address(sandbox, inside_index, SANDBOX_IFACE, IpNet::V6(v6)).await?;
        links::default_route(sandbox, inside_index, IpAddr::V6(gw6)).await?;
    }

    if let Some(stale) = stale_tap.filter(|t| plan.tap.as_deref() != Some(*t)) {
        links::delete(sandbox, stale).await?;
    }
    if let Some(tap) = &plan.tap {
        // This thread is inside the namespace, so the tap is made there and
        // the sysctls written are the namespace's own.
        tap::ensure(tap)?;
        links::up(sandbox, tap).await?;
        if let Some(guest) = &plan.guest {
            // The guest's gateway; also where its DNS, redirected to the
            // forwarder, arrives (a redirect needs an address on the link).
            let index = links::index(sandbox, tap)
                .await?
                .ok_or_else(|| SetupError::Vanished(tap.clone()))?;
            links::address(sandbox, index, tap, IpNet::V4(guest.tap_ipv4())).await?;
        }
        netns_fs::enable_sysctl("ipv4/ip_forward")?;
        if plan.ipv6.is_some() {
            netns_fs::enable_sysctl("ipv6/conf/all/forwarding")?;
        }
    }
    Ok(())
}
