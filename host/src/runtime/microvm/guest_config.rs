//! The guest's configuration, delivered as a fw_cfg file: `key=value`
//! lines the init reads from `/sys/firmware/qemu_fw_cfg/by_name/
//! opt/sbx/guest/raw`. The channel is neither the kernel command line
//! (readable by every guest process) nor QEMU's arguments (readable by
//! every host user through `ps`): the file is root's, mode 0600, and QEMU
//! reads it before it drops privileges. Every value is validated by the
//! types it comes from; nothing here contains a newline or `=` in a key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::super::{io_err, Launch, RuntimeError};

pub fn write(path: &Path, l: &Launch<'_>) -> Result<(), RuntimeError> {
    let text = render(l)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create guest config"))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("write guest config"))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename guest config"))
}

fn render(l: &Launch<'_>) -> Result<String, RuntimeError> {
    let (ipv4, gateway) = match (l.network.guest_ipv4, l.network.guest_gateway4) {
        (Some(a), Some(g)) => (a, g),
        _ => {
            return Err(RuntimeError::Vmm(
                "netctl gave no guest address for the tap (netctl too old?)".into(),
            ))
        }
    };
    let dns: Vec<String> = l.dns.iter().map(|d| d.to_string()).collect();
    // The id is a validated sandbox id ([A-Za-z0-9._-]), the key 64 hex
    // characters: neither can break a line.
    Ok(format!(
        "sandbox_id={id}\nhostname={id}\nipv4={ipv4}\ngateway4={gateway}\ndns={dns}\nkey={key}\n",
        id = l.id,
        dns = dns.join(" "),
        key = l.key_hex,
    ))
}
