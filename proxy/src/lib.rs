//! sbx-proxy: the public entry point into sandboxes (SPEC 6). Routes
//! `<id>.<domain>` and `<port>-<id>.<domain>` through each sandbox's agent,
//! authenticates callers, enforces `exposed_ports` and
//! `allow_unauthenticated_access`, and keeps the caller's platform
//! credentials away from sandbox code.

pub mod access;
pub mod admin;
pub mod api;
pub mod auth;
pub mod body;
pub mod config;
pub mod credentials_cli;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod netctl;
pub mod proxy;
pub mod registry;
pub mod resume;
pub mod route;
pub mod serve;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod webhook;
