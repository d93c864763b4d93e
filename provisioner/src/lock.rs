//! One `deploy` or `destroy` per deployment name at a time on this machine: an exclusive
//! advisory lock on `<config dir>/ai-sandbox/locks/<name>` ([`crate::paths`]), held for the
//! whole command and released by the OS when the process ends, however it ends. Two runs of
//! one name would otherwise each see "nothing exists" in their plan and then fight over the
//! labels. Runs on different machines are not covered here; `apply` refuses a label taken
//! on the first attempt instead.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another `ai-sandbox deploy` or `destroy` of \"{name}\" is running on this machine{holder}; \
         wait for it to end, or stop it with Ctrl-C (it cleans up what it created)"
    )]
    Busy { name: String, holder: String },
    #[error("cannot use the lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct NameLock {
    _file: File,
    pub path: PathBuf,
}

/// Takes the lock of deployment `name`, without waiting. `Ok(None)` when there is no
/// config directory to keep it in (neither `$XDG_CONFIG_HOME` nor `$HOME`).
pub fn acquire(name: &str) -> Result<Option<NameLock>, LockError> {
    match crate::paths::per_deployment("locks", name) {
        Some(path) => acquire_at(path, name).map(Some),
        None => Ok(None),
    }
}

/// [`acquire`], except that a lock file that cannot be used (a read-only or lock-less file
/// system) is a warning on stderr, not a failure: the lock is a guard, not a precondition.
/// Only another run holding it stops the caller.
pub fn guard(name: &str) -> Result<Option<NameLock>, LockError> {
    match acquire(name) {
        Err(e @ LockError::Io { .. }) => {
            eprintln!("warning: {e}; going on without the one-run-per-name guard");
            Ok(None)
        }
        other => other,
    }
}

fn acquire_at(path: PathBuf, name: &str) -> Result<NameLock, LockError> {
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!(" (process {pid})"),
                Err(_) => String::new(),
            };
            return Err(LockError::Busy {
                name: name.to_string(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // The holder's pid, for the message another run shows.
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(NameLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| acquire_at(dir.path().join(crate::paths::file_name(name)), name);
        let first = at("box/1").unwrap();
        assert!(first.path.ends_with("box_1"));
        // flock locks belong to the open file description: a second open is refused even in
        // the same process, as a second process would be.
        let err = at("box/1").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"box/1\""), "{msg}");
        assert!(
            msg.contains(&format!("(process {})", std::process::id())),
            "{msg}"
        );
        assert!(at("box2").is_ok(), "other names are not blocked");
        drop(first);
        assert!(at("box/1").is_ok());
    }

    #[test]
    fn an_unusable_lock_path_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let err = acquire_at(file.join("locks").join("box"), "box").unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
