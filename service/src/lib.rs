//! What the daemons (sbx-agent, netctl, sbx-proxy) need from the service
//! manager that runs them: `READY=1` / `STOPPING=1` notices (systemd
//! `Type=notify`), stop signals watched from before readiness is announced,
//! and the unix control socket their CLIs talk to.

pub mod control;
pub mod listen;
pub mod notify;
pub mod signals;

pub use signals::StopSignals;
