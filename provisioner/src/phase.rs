//! Deployment phases as the instance reports them in `/var/log/ai-sandbox/deploy.log`
//! (`<UTC time> phase=<id> <message>`, one line per change) and the parser the CLI uses
//! to show progress. `booting` is never written by the instance: it is what the CLI shows
//! between `running` and the first line.

use std::fmt;

/// Setup phases, in order. `Failed` can follow any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Booting,
    CloudInit,
    Drivers,
    Image,
    ModelDownload,
    Loading,
    Ready,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Booting,
        Phase::CloudInit,
        Phase::Drivers,
        Phase::Image,
        Phase::ModelDownload,
        Phase::Loading,
        Phase::Ready,
        Phase::Failed,
    ];

    /// The id written in the log (`phase=<id>`).
    pub fn id(self) -> &'static str {
        match self {
            Phase::Booting => "booting",
            Phase::CloudInit => "cloud-init",
            Phase::Drivers => "drivers",
            Phase::Image => "image",
            Phase::ModelDownload => "model-download",
            Phase::Loading => "loading",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
        }
    }

    /// Human label for progress displays.
    pub fn label(self) -> &'static str {
        match self {
            Phase::ModelDownload => "model download",
            other => other.id(),
        }
    }

    pub fn from_id(id: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.id() == id)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One parsed line of `deploy.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseEvent {
    /// As written: `YYYY-MM-DDTHH:MM:SSZ`.
    pub time: String,
    pub phase: Phase,
    pub message: String,
}

/// Parses one line; `None` for lines that are not phase lines.
pub fn parse_line(line: &str) -> Option<PhaseEvent> {
    let mut it = line.trim_end().splitn(3, ' ');
    let time = it.next()?;
    let phase = Phase::from_id(it.next()?.strip_prefix("phase=")?)?;
    let looks_like_time = time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T';
    looks_like_time.then(|| PhaseEvent {
        time: time.to_string(),
        phase,
        message: it.next().unwrap_or("").to_string(),
    })
}

/// The last phase event in a whole log, if any.
pub fn latest(log: &str) -> Option<PhaseEvent> {
    log.lines().rev().find_map(parse_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_finds_the_latest() {
        let log = "2025-01-02T03:04:05Z phase=cloud-init cloud-init started\n\
                   noise from somewhere\n\
                   2025-01-02T03:09:00Z phase=model-download downloading a/b\n";
        let e = latest(log).unwrap();
        assert_eq!(e.phase, Phase::ModelDownload);
        assert_eq!(e.phase.to_string(), "model download");
        assert_eq!(e.message, "downloading a/b");
        assert_eq!(e.time, "2025-01-02T03:09:00Z");
        assert_eq!(
            parse_line("2025-01-02T03:04:05Z phase=ready")
                .unwrap()
                .message,
            ""
        );
        assert!(parse_line("2025-01-02T03:04:05Z phase=bogus x").is_none());
        assert!(parse_line("yesterday phase=ready x").is_none());
        assert!(latest("").is_none());
    }

    #[test]
    fn ids_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::from_id(p.id()), Some(p));
        }
    }
}
