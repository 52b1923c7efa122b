//! The one client of netctl's API (netctl/README.md), shared by the
//! daemons that ask netctl for something: sbx-proxy changes a sandbox's
//! policy, sbx-host makes and deletes its whole network. One request per
//! connection over netctl's root-only unix socket.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use sbx_proto::policy::{NetworkPolicy, SandboxPatch, SandboxSpec, SetupSpec};
use sbx_service::control::{self, ClientError};
use serde::Deserialize;

/// Why netctl did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NetctlError {
    /// netctl refused the request (an invalid or unresolvable policy
    /// entry, a bad id): its message names what, and callers pass it on as
    /// a 400.
    #[error("{0}")]
    Refused(String),
    /// netctl does not know the sandbox.
    #[error("netctl has no sandbox {0:?}")]
    UnknownSandbox(String),
    /// netctl could not be asked, or failed (the message says which step).
    #[error("netctl: {0}")]
    Unavailable(String),
}

impl From<ClientError> for NetctlError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api {
                status, message, ..
            } if status.as_u16() == 400 => Self::Refused(message),
            e => Self::Unavailable(e.to_string()),
        }
    }
}

/// What netctl made for a sandbox (the `setup` section of its view).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetworkSetup {
    /// Namespace name, e.g. `sbx-<id>`.
    pub netns: String,
    /// Where the namespace is mounted; a VMM or agent enters it from here.
    pub netns_path: PathBuf,
    /// The sandbox's address with its prefix: where its agent answers.
    pub ipv4: Ipv4Net,
    pub gateway4: Ipv4Addr,
    /// The tap inside the namespace, when one was asked for.
    #[serde(default)]
    pub tap: Option<String>,
    /// The guest's own addressing behind the tap (the same in every
    /// sandbox: netctl translates to and from `ipv4`).
    #[serde(default)]
    pub guest: Option<GuestAddress>,
}

/// The address a microVM guest configures on its NIC.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestAddress {
    pub ipv4: Ipv4Net,
    pub gateway4: Ipv4Addr,
}

#[derive(Deserialize)]
struct View {
    #[serde(default)]
    setup: Option<NetworkSetup>,
}

/// netctl on one host, by its socket.
#[derive(Debug, Clone)]
pub struct Netctl {
    socket: PathBuf,
}

impl Netctl {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Makes (or repairs: netctl's PUT is idempotent) the sandbox's
    /// namespace, veth, addresses, optional tap and policy, as one request.
    /// A policy naming a domain that does not resolve is `Refused` and
    /// nothing is made.
    pub async fn create_network(
        &self,
        id: &str,
        tap: bool,
        policy: Option<&NetworkPolicy>,
    ) -> Result<NetworkSetup, NetctlError> {
        let spec = SandboxSpec {
            netns: None,
            setup: Some(SetupSpec { tap }),
            iface: None,
            network: policy.cloned(),
        };
        let body = to_body(&spec)?;
        let bytes = self.send("PUT", id, Some(body)).await?;
        let view: View = serde_json::from_slice(&bytes)
            .map_err(|e| NetctlError::Unavailable(format!("unexpected answer to PUT {id}: {e}")))?;
        view.setup.ok_or_else(|| {
            NetctlError::Unavailable(format!("PUT {id}: the answer has no setup section"))
        })
    }

    /// The network netctl made for `id`, if it knows the sandbox.
    pub async fn network(&self, id: &str) -> Result<Option<NetworkSetup>, NetctlError> {
        match self.send("GET", id, None).await {
            Ok(bytes) => {
                let view: View = serde_json::from_slice(&bytes).map_err(|e| {
                    NetctlError::Unavailable(format!("unexpected answer to GET {id}: {e}"))
                })?;
                Ok(view.setup)
            }
            Err(NetctlError::UnknownSandbox(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces (`Some`) or clears (`None`) the policy of `id`.
    pub async fn set_policy(
        &self,
        id: &str,
        policy: Option<&NetworkPolicy>,
    ) -> Result<(), NetctlError> {
        let patch = SandboxPatch {
            network: Some(policy.cloned()),
        };
        self.send("PATCH", id, Some(to_body(&patch)?)).await?;
        Ok(())
    }

    /// Deletes the sandbox's network (everything netctl made for it).
    /// Returns whether netctl knew it: deleting twice is not an error, so
    /// an interrupted delete can always be finished.
    pub async fn delete(&self, id: &str) -> Result<bool, NetctlError> {
        match self.send("DELETE", id, None).await {
            Ok(_) => Ok(true),
            Err(NetctlError::UnknownSandbox(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &self,
        method: &str,
        id: &str,
        body: Option<Vec<u8>>,
    ) -> Result<control::Bytes, NetctlError> {
        // The id becomes a path segment: refuse anything netctl would not
        // take rather than let it reach another route.
        sbx_proto::policy::validate_id(id).map_err(|e| NetctlError::Refused(e.to_string()))?;
        let path = format!("/v1/sandboxes/{id}");
        match control::request("netctl", &self.socket, method, &path, body).await {
            Ok(bytes) => Ok(bytes),
            Err(ClientError::Api { status, .. }) if status.as_u16() == 404 => {
                Err(NetctlError::UnknownSandbox(id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn to_body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, NetctlError> {
    serde_json::to_vec(value).map_err(|e| NetctlError::Unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_with_a_tap_and_guest_parses() {
        let view: View = serde_json::from_str(
            r#"{"id":"a","netns":"/run/netns/sbx-a","setup":{"netns":"sbx-a","netns_path":"/run/netns/sbx-a","slot":0,
               "host_iface":"sbxh0","sandbox_iface":"eth0","ipv4":"10.200.0.2/30","gateway4":"10.200.0.1",
               "ipv6":null,"gateway6":null,"tap":"tap0",
               "guest":{"ipv4":"10.0.2.2/30","gateway4":"10.0.2.1"}}}"#,
        )
        .unwrap();
        let s = view.setup.unwrap();
        assert_eq!(s.ipv4.addr(), Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(s.tap.as_deref(), Some("tap0"));
        assert_eq!(s.guest.unwrap().gateway4, Ipv4Addr::new(10, 0, 2, 1));
    }

    #[tokio::test]
    async fn a_bad_id_is_refused_before_any_request() {
        let n = Netctl::new("/nonexistent/netctl.sock");
        assert!(matches!(
            n.delete("../x").await,
            Err(NetctlError::Refused(_))
        ));
    }
}
