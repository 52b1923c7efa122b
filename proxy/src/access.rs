//! SPEC 6's access decision, in its order. The sandbox has already been
//! found (step 1); this decides the rest.

use http::HeaderMap;

use crate::auth::{presented, CredentialKind, CredentialStore, Verdict};
use crate::error::{Code, ProxyError};
use crate::registry::Sandbox;
use crate::route::AGENT_PORT;

/// How a request was let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A public exposed port: nothing was consumed. `platform_credential`
    /// says the request carries a valid platform credential anyway (a
    /// caller's API key sent to every host): it is removed all the same,
    /// while an application's own `Authorization` passes.
    Public { platform_credential: bool },
    /// The caller authenticated; the credential (and its context, from the
    /// query when `context_from_query`) is removed before forwarding.
    Authenticated { context_from_query: bool },
}

/// `asked` is the id or name as the caller wrote it: a refusal that must
/// look like "not found" repeats it, as the real not-found does.
pub async fn decide(
    sandbox: &Sandbox,
    asked: &str,
    port: u16,
    headers: &HeaderMap,
    query: Option<&str>,
    store: &dyn CredentialStore,
) -> Result<Access, ProxyError> {
    let spec = &sandbox.spec;
    let exposed = port != AGENT_PORT && spec.exposed_ports.binary_search(&port).is_ok();
    let presented = presented(headers, query);
    // Step 2 and 3: 9501 never takes the public path.
    if exposed && spec.allow_unauthenticated_access {
        let platform_credential = match &presented {
            // Only a credential the store knows is the platform's; an
            // unknown bearer token is the application's own.
            Some((credential, context)) => !matches!(
                store.verify(credential, context).await,
                Ok(Verdict::Invalid)
            ),
            None => false,
        };
        return Ok(Access::Public {
            platform_credential,
        });
    }
    // Step 4.
    let Some((credential, context)) = presented else {
        return Err(ProxyError::new(
            Code::Unauthorized,
            "authentication required: an API key, or a personal access token or session with X-Forwarded-Organization-Id and X-Forwarded-Project-Id",
        ));
    };
    let verdict = store.verify(&credential, &context).await.map_err(|e| {
        tracing::error!(error = %e, "credential store unavailable; refusing");
        ProxyError::new(
            Code::AuthUnavailable,
            "credentials cannot be checked right now",
        )
        .retry_after(1)
    })?;
    match verdict {
        Verdict::Invalid => {
            return Err(ProxyError::new(
                Code::Unauthorized,
                format!(
                "the {} is not valid here (unknown, expired, or missing its organization/project)",
                credential.kind.as_str().replace('_', " ")
            ),
            ))
        }
        Verdict::OutOfScope => return Err(not_found(asked)),
        Verdict::Granted(p)
            if p.organization_id != spec.organization_id || p.project_id != spec.project_id =>
        {
            return Err(not_found(asked))
        }
        Verdict::Granted(_) => {}
    }
    // Step 5.
    if port != AGENT_PORT && !exposed {
        return Err(ProxyError::new(
            Code::PortNotExposed,
            format!("port {port} is not exposed; expose it with the sandbox API"),
        ));
    }
    // An API key carries its own project: query parameters that look like
    // a context are then the application's, and stay.
    Ok(Access::Authenticated {
        context_from_query: context.from_query && credential.kind != CredentialKind::ApiKey,
    })
}

/// The same answer as for a sandbox that does not exist, so another
/// project's sandboxes are not revealed.
pub fn not_found(what: &str) -> ProxyError {
    ProxyError::new(Code::SandboxNotFound, format!("no sandbox {what:?}"))
}
