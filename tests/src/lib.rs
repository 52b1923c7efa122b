//! Support code for the integration tests: network namespaces the test owns,
//! child processes ended by PID on drop, and paths to the built binaries.

pub mod agent;
pub mod bins;
pub mod dns_client;
pub mod egress_gen;
pub mod egress_reference;
pub mod host_support;
pub mod netctl_support;
pub mod netns;
pub mod process;
pub mod proxy_support;
pub mod python;
pub mod servers;
pub mod setup_support;
pub mod soak;
