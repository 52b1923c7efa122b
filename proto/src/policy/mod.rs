//! Network policy types and their validation, shared by netctl and every
//! client that sends a policy.
//!
//! Validation is strict on purpose: netctl runs as root and turns these
//! entries into kernel rules, so anything ambiguous (a CIDR with host bits
//! set, a wildcard name, an over-long list) is refused with the offending
//! entry named rather than guessed at.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize};

/// Most entries one list may hold: enough for real blocklists, small enough
/// that an apply stays well under a second.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Longest entry accepted. A domain name is at most 253 bytes; anything
/// longer is refused before it is parsed (and before it is echoed back).
pub const MAX_ENTRY_LEN: usize = 253;

/// Longest sandbox id; ids become file names in the state directory.
pub const MAX_ID_LEN: usize = 64;

/// Longest network interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFACE_LEN: usize = 15;

/// The policy object as the platform API sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default = "default_true")]
    pub allow_internet_access: bool,
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
}

crate::object_only!(NetworkPolicy, SandboxSpec, SetupSpec, SandboxPatch);

fn default_true() -> bool {
    true
}

impl Default for NetworkPolicy {
    /// No policy means the sandbox may reach anything (the platform default).
    fn default() -> Self {
        Self {
            allow_internet_access: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

/// One destination from `allow_out` or `deny_out`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// An address (as a host prefix) or a CIDR. IPv4-mapped IPv6 entries
    /// are already folded into their IPv4 form.
    Net(IpNet),
    /// A lower-cased RFC 1123 host name without a trailing dot.
    Domain(String),
    /// `*.example.com`: every name under `example.com` (stored without the
    /// `*.`), but not `example.com` itself. Enforced through DNS answers
    /// only: there is nothing to resolve in advance.
    Wildcard(String),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{}", net.addr())
            }
            Self::Net(net) => write!(f, "{net}"),
            Self::Domain(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// A policy that passed validation: the only form netctl turns into rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPolicy {
    pub allow_internet_access: bool,
    pub allow_out: Vec<Destination>,
    pub deny_out: Vec<Destination>,
}

impl ValidPolicy {
    /// Whether either list names a domain or a wildcard: then the
    /// sandbox's DNS is answered by netctl (SPEC 4).
    pub fn names_any_domain(&self) -> bool {
        self.allow_out
            .iter()
            .chain(&self.deny_out)
            .any(|d| !matches!(d, Destination::Net(_)))
    }

    /// Every domain name either list mentions (not wildcards: there is
    /// nothing to resolve in advance), sorted and de-duplicated.
    pub fn domains(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .allow_out
            .iter()
            .chain(&self.deny_out)
            .filter_map(|d| match d {
                Destination::Domain(name) => Some(name.clone()),
                Destination::Net(_) | Destination::Wildcard(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Why an entry or a policy was refused. The message names the list, the
/// position and the entry so an operator can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{list} has {count} entries; at most {max} are allowed")]
    TooManyEntries {
        list: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{list}[{index}] {entry:?}: {reason}")]
    BadEntry {
        list: &'static str,
        index: usize,
        entry: String,
        reason: EntryError,
    },
}

/// What is wrong with a single entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("empty entry")]
    Empty,
    #[error("longer than {MAX_ENTRY_LEN} bytes")]
    TooLong,
    #[error("not a valid CIDR")]
    BadCidr,
    #[error("host bits set (the network is {0})")]
    HostBitsSet(IpNet),
    #[error("a wildcard is only allowed as a whole first label (\"*.example.com\")")]
    Wildcard,
    #[error("not an IP address, CIDR or RFC 1123 host name")]
    BadName,
}

impl NetworkPolicy {
    /// Checks every entry and the list sizes; the first problem is returned.
    pub fn validate(&self) -> Result<ValidPolicy, PolicyError> {
        Ok(ValidPolicy {
            allow_internet_access: self.allow_internet_access,
            allow_out: validate_list("allow_out", &self.allow_out)?,
            deny_out: validate_list("deny_out", &self.deny_out)?,
        })
    }
}

fn validate_list(list: &'static str, entries: &[String]) -> Result<Vec<Destination>, PolicyError> {
    if entries.len() > MAX_LIST_ENTRIES {
        return Err(PolicyError::TooManyEntries {
            list,
            count: entries.len(),
            max: MAX_LIST_ENTRIES,
        });
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            parse_destination(entry).map_err(|reason| PolicyError::BadEntry {
                list,
                index,
                entry: shorten(entry),
                reason,
            })
        })
        .collect()
}

/// Keeps error messages bounded when someone sends a megabyte-long entry.
fn shorten(entry: &str) -> String {
    const SHOWN: usize = 64;
    if entry.len() <= SHOWN {
        return entry.to_owned();
    }
    let mut end = SHOWN;
    while !entry.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &entry[..end])
}

/// Parses one entry: an address, a CIDR, or a host name.
pub fn parse_destination(entry: &str) -> Result<Destination, EntryError> {
    if entry.is_empty() {
        return Err(EntryError::Empty);
    }
    if entry.len() > MAX_ENTRY_LEN {
        return Err(EntryError::TooLong);
    }
    if entry.contains('/') {
        let net: IpNet = entry.parse().map_err(|_| EntryError::BadCidr)?;
        if net.trunc() != net {
            return Err(EntryError::HostBitsSet(net.trunc()));
        }
        return Ok(Destination::Net(fold_mapped(net)));
    }
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Ok(Destination::Net(fold_mapped(IpNet::from(addr))));
    }
    match entry.strip_prefix("*.") {
        Some(suffix) => parse_domain(suffix).map(Destination::Wildcard),
        None => parse_domain(entry).map(Destination::Domain),
    }
}

/// An IPv4-mapped IPv6 destination (`::ffff:a.b.c.d`) is reached with IPv4
/// packets, so it belongs in the IPv4 set. Only prefixes that lie wholly
/// inside `::ffff:0:0/96` are folded: a wider IPv6 prefix such as `::/0`
/// means "all of IPv6", not "all of IPv4 too".
pub fn fold_mapped(net: IpNet) -> IpNet {
    const MAPPED_PREFIX: u8 = 96;
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= MAPPED_PREFIX => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - MAPPED_PREFIX)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// Folds a single address the same way as [`fold_mapped`].
pub fn fold_mapped_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// RFC 1123 host name: labels of 1-63 letters, digits and inner hyphens,
/// 253 bytes in all. Lower-cased; one trailing dot (the root) is dropped.
/// The last label may not be all digits, so `1.2.3` is not taken for a name.
pub fn parse_domain(entry: &str) -> Result<String, EntryError> {
    if entry.contains('*') {
        return Err(EntryError::Wildcard);
    }
    let name = entry
        .strip_suffix('.')
        .unwrap_or(entry)
        .to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_ENTRY_LEN {
        return Err(EntryError::BadName);
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if !ok {
            return Err(EntryError::BadName);
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EntryError::BadName);
    }
    Ok(name)
}

/// Body of `PUT /v1/sandboxes/{id}` on netctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct SandboxSpec {
    /// A name under /run/netns, or a path such as /proc/<pid>/ns/net: a
    /// namespace someone else made. Exactly one of `netns` and `setup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// netctl makes (and later removes) the namespace and its links itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupSpec>,
    /// The sandbox's tap/veth inside that netns, for forwarded VM traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// `null` or absent: no policy, everything allowed.
    #[serde(default)]
    pub network: Option<NetworkPolicy>,
}

/// The `setup` section of a PUT: what netctl builds for the sandbox beyond
/// the namespace, veth pair, addresses and routes it always makes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct SetupSpec {
    /// A tap device inside the namespace for a microVM, with forwarding
    /// enabled there; the policy then also judges what the VM sends.
    #[serde(default)]
    pub tap: bool,
}

/// Body of `PATCH /v1/sandboxes/{id}`: `network` absent keeps the policy,
/// `null` clears it (allow all), an object replaces it whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct SandboxPatch {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub network: Option<Option<NetworkPolicy>>,
}

/// Distinguishes a field that is present with `null` (`Some(None)`) from an
/// absent one (`None`, via `#[serde(default)]`).
fn present<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// Why a sandbox id, netns reference or interface name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("sandbox id {0:?}: use 1-{MAX_ID_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit")]
    BadId(String),
    #[error("netns {0:?}: expected a name under /run/netns, /run/netns/<name>, or /proc/<pid>[/task/<tid>]/ns/net")]
    BadNetns(String),
    #[error("iface {0:?}: expected 1-{MAX_IFACE_LEN} letters, digits, '-', '_' or '.'")]
    BadIface(String),
    #[error(
        "give exactly one of \"netns\" (a namespace you made) and \"setup\" (netctl makes it)"
    )]
    Target,
}

fn is_plain_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Ids become file names and metric labels, so they are kept plain.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    if is_plain_name(id, MAX_ID_LEN) {
        Ok(())
    } else {
        Err(SpecError::BadId(shorten(id)))
    }
}

/// Validates an interface name (as Linux would take it, minus exotic bytes).
pub fn validate_iface(iface: &str) -> Result<(), SpecError> {
    if is_plain_name(iface, MAX_IFACE_LEN) {
        Ok(())
    } else {
        Err(SpecError::BadIface(shorten(iface)))
    }
}

/// Resolves a netns reference to the path netctl opens. Only the places
/// where network namespaces live are accepted, so a request cannot make the
/// daemon open an arbitrary file.
pub fn netns_path(netns: &str) -> Result<String, SpecError> {
    let bad = || SpecError::BadNetns(shorten(netns));
    let name_ok = |n: &str| is_plain_name(n, MAX_ID_LEN);
    let digits = |n: &str| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit());
    if name_ok(netns) {
        return Ok(format!("/run/netns/{netns}"));
    }
    if let Some(name) = netns
        .strip_prefix("/run/netns/")
        .or_else(|| netns.strip_prefix("/var/run/netns/"))
    {
        return if name_ok(name) {
            Ok(netns.to_owned())
        } else {
            Err(bad())
        };
    }
    if let Some(rest) = netns.strip_prefix("/proc/") {
        let parts: Vec<&str> = rest.split('/').collect();
        let ok = match parts.as_slice() {
            [pid, "ns", "net"] => digits(pid),
            [pid, "task", tid, "ns", "net"] => digits(pid) && digits(tid),
            _ => false,
        };
        return if ok { Ok(netns.to_owned()) } else { Err(bad()) };
    }
    Err(bad())
}

impl SandboxSpec {
    /// Exactly one of `netns` and `setup`: a request is either about a
    /// namespace someone else owns or one netctl makes, never both.
    pub fn check_target(&self) -> Result<(), SpecError> {
        match (&self.netns, &self.setup) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(SpecError::Target),
        }
    }

    /// Validates everything in the body: netns or setup, iface and policy.
    pub fn validate(&self) -> Result<Option<ValidPolicy>, String> {
        self.check_target().map_err(|e| e.to_string())?;
        if let Some(netns) = &self.netns {
            netns_path(netns).map_err(|e| e.to_string())?;
        }
        if let Some(iface) = &self.iface {
            validate_iface(iface).map_err(|e| e.to_string())?;
        }
        self.network
            .as_ref()
            .map(NetworkPolicy::validate)
            .transpose()
            .map_err(|e| e.to_string())
    }
}

/// Convenience for callers that hold addresses rather than strings.
pub fn host_net(addr: IpAddr) -> IpNet {
    match fold_mapped_addr(addr) {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::from(v6)),
    }
}

#[cfg(test)]
mod tests;
