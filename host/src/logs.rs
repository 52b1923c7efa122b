//! A guest's console and an agent's output go to files the writer opened
//! with O_APPEND (QEMU's `-chardev file,append=on`, the agent's stderr),
//! so they keep working while sbx-host restarts. sbx-host keeps them
//! bounded by cutting each to its last half once it passes the limit: the
//! writer's next append lands at the new end.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Opens (creating, mode 0600) a log for a child to append to.
pub fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Cuts `path` to its last `max / 2` bytes if it is longer than `max`.
/// Returns whether it cut.
pub fn bound(path: &Path, max: u64) -> io::Result<bool> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= max {
        return Ok(false);
    }
    let keep = max / 2;
    f.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    Read::by_ref(&mut f).take(keep).read_to_end(&mut tail)?;
    // Start at a line so the first kept line is whole.
    let start = tail.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(b"[sbx-host: earlier output cut]\n")?;
    f.write_all(&tail[start..])?;
    Ok(true)
}

/// How much of a guest's console a failure puts in our log: a kernel
/// panic's header and its whole trace fit.
pub const CONSOLE_TAIL_LINES: usize = 60;

/// The last `lines` lines of a log, for an error message in our own log
/// (never in an API answer: a guest writes what it likes there).
pub fn tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 16 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut buf = Vec::new();
    let _ = f.take(MAX).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the last 4 KiB of a log contain `needle` (cheap enough to ask
/// on every health poll).
pub fn tail_contains(path: &Path, needle: &[u8]) -> bool {
    const WINDOW: u64 = 4096;
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(WINDOW as usize);
    if f.take(WINDOW).read_to_end(&mut buf).is_err() {
        return false;
    }
    buf.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_keeps_the_last_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut w = open_append(&p).unwrap();
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
        }
        assert!(bound(&p, 4096).unwrap());
        // The writer appends at the new end, not at its old offset.
        writeln!(w, "after").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() < 4096, "{}", text.len());
        assert!(text.starts_with("[sbx-host: earlier output cut]\nline "));
        assert!(text.ends_with("line 999\nafter\n"), "{text}");
        assert_eq!(tail(&p, 2), "line 999\nafter");
        assert!(tail_contains(&p, b"line 999"));
        assert!(!tail_contains(&p, b"line 1000"));
        assert!(!bound(&p, 4096).unwrap());
    }
}
