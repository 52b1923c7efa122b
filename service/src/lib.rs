//! What sbx-agent and netctl both need from the service manager that runs
//! them: `READY=1` / `STOPPING=1` notices (systemd `Type=notify`) and stop
//! signals watched from before readiness is announced.

pub mod notify;
pub mod signals;

pub use signals::StopSignals;
