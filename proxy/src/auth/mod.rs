//! Who is calling: platform credentials taken from a request and checked
//! against a credential store.
//!
//! The store is a trait so that the embedded credentials file (one proxy,
//! or a fleet sharing a file from configuration management) and an HTTP
//! introspection service (a fleet backed by the control plane) are
//! interchangeable; the access decision only sees a [`Verdict`].

pub mod credential;
pub mod file;
pub mod introspect;

use futures_util::future::BoxFuture;

pub use credential::{presented, Context, Credential, CredentialKind};

/// The organization and project a request may act in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub organization_id: String,
    pub project_id: String,
}

/// What a store says of one credential with its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid, and may act in this project.
    Granted(Principal),
    /// Valid, but not a member of the project it names: to the caller this
    /// looks like an unknown sandbox (404), never like a bad credential.
    OutOfScope,
    /// Unknown, expired or malformed; or a PAT or session without an
    /// organization/project context: 401.
    Invalid,
}

/// Why a store could not answer at all. The proxy fails closed on it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credentials file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("introspection service: {0}")]
    Introspection(String),
}

/// A place that knows which credentials are valid.
pub trait CredentialStore: Send + Sync {
    /// Checks one credential. Implementations compare secrets in constant
    /// time and never log a credential's value.
    fn verify<'a>(
        &'a self,
        credential: &'a Credential,
        context: &'a Context,
    ) -> BoxFuture<'a, Result<Verdict, AuthError>>;

    /// Re-reads whatever the store is loaded from (SIGHUP). A store that
    /// fails to reload keeps what it had.
    fn reload(&self) -> Result<(), AuthError>;
}
