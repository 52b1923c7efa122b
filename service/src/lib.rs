//! What the daemons (sbx-agent, netctl, sbx-proxy) need from the service
//! manager that runs them: `READY=1` / `STOPPING=1` notices (systemd
//! `Type=notify`), stop signals watched from before readiness is announced,
//! and the unix control socket their CLIs talk to.

pub mod control;
pub mod listen;
pub mod notify;
pub mod signals;

pub use signals::StopSignals;

/// An error and its causes on one line for the terminal, leaving out a
/// cause whose text the message before it already quotes (our errors
/// often embed their source).
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
