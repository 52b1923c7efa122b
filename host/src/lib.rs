//! sbx-host: the sandboxes of one hypervisor host (SPEC 8). Its network
//! comes from netctl, its guest from a runtime (a QEMU microVM, or the
//! agent as a process), and its state lives on disk so a restart adopts
//! what runs.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod image;
pub mod logs;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod procs;
pub mod runtime;
pub mod serve;
pub mod store;
