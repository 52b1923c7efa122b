//! The sandbox's network policy lives in netctl on its host: a PATCH of
//! `network` through the sandbox API is a PATCH to netctl's unix socket,
//! through the one netctl client the daemons share.

use std::path::Path;

use sbx_proto::policy::NetworkPolicy;

pub use sbx_netctl_client::NetctlError;

/// Replaces (`Some`) or clears (`None`) the policy of `id` through netctl.
pub async fn set_policy(
    socket: &Path,
    id: &str,
    policy: Option<&NetworkPolicy>,
) -> Result<(), NetctlError> {
    sbx_netctl_client::Netctl::new(socket)
        .set_policy(id, policy)
        .await
}
