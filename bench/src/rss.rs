//! Server memory from `/proc/PID/status` (Linux).

/// The `VmRSS` and `VmHWM` (peak) of process `pid` in KiB, or `None` if unreadable.
pub fn read_rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&text)
}

/// Parses `VmRSS:` and `VmHWM:` (KiB) out of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_reads_self() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status(text), Some((1024, 2048)));
        assert_eq!(parse_status("Name:\tx\n"), None);
        let (rss, hwm) = read_rss_kib(std::process::id()).expect("own /proc status");
        assert!(rss > 0 && hwm >= rss);
    }
}
