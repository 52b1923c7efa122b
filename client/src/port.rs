//! `sbx port expose|ls|rm`: a sandbox's exposed ports through the sandbox
//! API (SPEC 7), as `tl sbx port` does: read the entry, then PATCH the
//! whole port list with `allow_unauthenticated_access`.

use anyhow::{bail, Context as _};
use serde::Deserialize;
use serde_json::json;

use crate::credentials::Credentials;
use crate::request::{self, Body, RequestError};
use crate::target::AgentUrl;

/// Largest answer read from the API.
const MAX_ANSWER: usize = 1024 * 1024;
/// The agent's port, never exposed.
const AGENT_PORT: u16 = 9501;

/// Where the sandbox API is and who is asking.
pub struct Api {
    pub url: AgentUrl,
    pub credentials: Credentials,
    pub namespace: String,
}

/// The part of `SandboxInfo` this command reads.
#[derive(Debug, Deserialize)]
struct Info {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    exposed_ports: Vec<u16>,
    #[serde(default)]
    allow_unauthenticated_access: bool,
    #[serde(default)]
    ingress_endpoint: Option<String>,
}

impl Api {
    /// The SDK's rule: a localhost API takes the namespace form, any other
    /// the cloud form scoped by the credential.
    fn path(&self, sandbox: &str) -> String {
        let local = matches!(self.url.host.as_str(), "localhost" | "127.0.0.1");
        if local {
            format!("/v1/namespaces/{}/sandboxes/{sandbox}", self.namespace)
        } else {
            format!("/sandboxes/{sandbox}")
        }
    }

    async fn call(&self, method: &str, sandbox: &str, body: Body) -> anyhow::Result<Info> {
        let answer = async {
            request::send(
                &self.url,
                method,
                &self.path(sandbox),
                &self.credentials,
                body,
                "application/json",
            )
            .await?
            .success()
            .await?
            .bytes(MAX_ANSWER)
            .await
        }
        .await
        .map_err(|e| match e {
            RequestError::Api {
                status, message, ..
            } => anyhow::anyhow!("the sandbox API answered {status}: {message}"),
            RequestError::Connect { url, source } => {
                anyhow::anyhow!("cannot reach the sandbox API at {url}: {source}")
            }
            other => anyhow::Error::new(other).context("talking to the sandbox API"),
        })?;
        serde_json::from_slice(&answer)
            .context("the sandbox API sent something that is not a sandbox")
    }

    async fn patch(&self, sandbox: &str, ports: &[u16], public: bool) -> anyhow::Result<Info> {
        let body = json!({"exposed_ports": ports, "allow_unauthenticated_access": public});
        self.call("PATCH", sandbox, Body::Json(body)).await
    }
}

fn check_port(port: u16) -> anyhow::Result<()> {
    if port == 0 || port == AGENT_PORT {
        bail!("port {port} cannot be exposed (1-65535, and {AGENT_PORT} is the sandbox agent's)");
    }
    Ok(())
}

/// Exposes `port`; public unless `auth` (the flag covers the sandbox's
/// every exposed port: it is one setting per sandbox).
pub async fn expose(api: &Api, sandbox: &str, port: u16, auth: bool) -> anyhow::Result<()> {
    check_port(port)?;
    let current = api.call("GET", sandbox, Body::Empty).await?;
    let mut ports = current.exposed_ports.clone();
    ports.push(port);
    ports.sort_unstable();
    ports.dedup();
    if auth && current.allow_unauthenticated_access && current.exposed_ports.len() > 1 {
        eprintln!(
            "note: access is one setting per sandbox: every exposed port now needs a credential"
        );
    }
    let info = api.patch(sandbox, &ports, !auth).await?;
    print(&info);
    Ok(())
}

/// Unexposes `port`; the last one going also ends public access.
pub async fn rm(api: &Api, sandbox: &str, port: u16) -> anyhow::Result<()> {
    let current = api.call("GET", sandbox, Body::Empty).await?;
    if !current.exposed_ports.contains(&port) {
        bail!("port {port} is not exposed on {sandbox}");
    }
    let ports: Vec<u16> = current
        .exposed_ports
        .iter()
        .copied()
        .filter(|p| *p != port)
        .collect();
    let public = current.allow_unauthenticated_access && !ports.is_empty();
    let info = api.patch(sandbox, &ports, public).await?;
    print(&info);
    Ok(())
}

pub async fn ls(api: &Api, sandbox: &str) -> anyhow::Result<()> {
    let info = api.call("GET", sandbox, Body::Empty).await?;
    print(&info);
    Ok(())
}

fn print(info: &Info) {
    let who = info.name.as_deref().unwrap_or(&info.id);
    let access = if info.allow_unauthenticated_access {
        "public"
    } else {
        "needs a credential"
    };
    if info.exposed_ports.is_empty() {
        println!("{who}: no port exposed");
        return;
    }
    println!("{who}: {access}");
    for port in &info.exposed_ports {
        match info.ingress_endpoint.as_deref().and_then(split_endpoint) {
            Some((scheme, host)) => println!("  {port}\t{scheme}://{port}-{}.{host}/", info.id),
            None => println!("  {port}"),
        }
    }
}

/// `https://sandbox.example.com:8443` → ("https", "sandbox.example.com:8443").
fn split_endpoint(endpoint: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = endpoint.split_once("://")?;
    Some((scheme, rest.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_sdk() {
        let api = |url: &str| Api {
            url: AgentUrl::parse(url).unwrap(),
            credentials: Credentials::Anonymous,
            namespace: "default".into(),
        };
        assert_eq!(
            api("http://127.0.0.1:8900").path("web"),
            "/v1/namespaces/default/sandboxes/web"
        );
        assert_eq!(
            api("http://localhost:8900").path("web"),
            "/v1/namespaces/default/sandboxes/web"
        );
        assert_eq!(api("http://10.0.0.5:8900").path("web"), "/sandboxes/web");
        assert_eq!(
            split_endpoint("https://sbx.example.com:8443/"),
            Some(("https", "sbx.example.com:8443"))
        );
        assert!(check_port(9501).is_err());
        assert!(check_port(0).is_err());
        assert!(check_port(8080).is_ok());
    }
}
