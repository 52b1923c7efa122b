//! The wire contract shared by every party that touches a sandbox's network:
//! the agent, netctl, the `sbx` client and the tests.
//!
//! Kept free of any async runtime so that it can be used from anything,
//! including build scripts and FFI bindings.

pub mod api;
pub mod auth;
pub mod error;
pub mod integral;
pub mod json;
pub mod policy;
pub mod tunnel;

pub use error::{ErrorBody, ErrorCode};
