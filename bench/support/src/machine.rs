//! What the machine was like during a run, printed under the results: a
//! figure measured on a busy or different machine must be readable as such.

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`.
pub fn loadavg() -> String {
    let text = read_trimmed("/proc/loadavg");
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `Machine:` line: CPUs, kernel, and the load before and after.
pub fn summary(load_before: &str, load_after: &str) -> String {
    format!(
        "Machine: {} CPUs, kernel {}; load average before {load_before}, after {load_after}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        read_trimmed("/proc/sys/kernel/osrelease"),
    )
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
