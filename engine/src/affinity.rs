//! Pinning the inference threads to CPUs (`--pin-threads`): thread `i` of the compute pool to
//! the `i`-th CPU this process may run on (modulo their count), so that a thread keeps its
//! caches and never shares a CPU with its sibling. Linux only (`sched_setaffinity`); elsewhere a
//! request to pin is refused at load.
//!
//! Off by default. Measured (docs/performance.md, 2026-12-05, a 2-vCPU Sapphire Rapids VM,
//! SmolLM2 Q4_1, 2 threads): no difference on a quiet machine; with another process spinning on
//! one CPU, single-stream decode +14-25% but 8 streams -4 to -12% (a pinned thread cannot leave
//! the loaded CPU).

use crate::EngineError;

/// The CPUs this process may run on, in increasing order.
pub(crate) fn allowed_cpus() -> Result<Vec<usize>, EngineError> {
    imp::allowed_cpus()
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_current(cpu: usize) -> Result<(), EngineError> {
    imp::pin_current(cpu)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::EngineError;

    fn error(what: &str) -> EngineError {
        EngineError::Load(format!("--pin-threads: {what}: {}", std::io::Error::last_os_error()))
    }

    pub(super) fn allowed_cpus() -> Result<Vec<usize>, EngineError> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
            return Err(error("cannot read this process's CPUs"));
        }
        // SAFETY: `set` is initialised; CPU_ISSET reads within it for cpu < CPU_SETSIZE.
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect();
        if cpus.is_empty() {
            return Err(EngineError::Load("--pin-threads: this process may run on no CPU".into()));
        }
        Ok(cpus)
    }

    pub(super) fn pin_current(cpu: usize) -> Result<(), EngineError> {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(EngineError::Load(format!("--pin-threads: CPU {cpu} beyond the CPU set")));
        }
        // SAFETY: as above; CPU_SET writes within the set for cpu < CPU_SETSIZE (checked).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
            return Err(error(&format!("cannot pin a thread to CPU {cpu}")));
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::EngineError;

    pub(super) fn allowed_cpus() -> Result<Vec<usize>, EngineError> {
        Err(EngineError::Load("--pin-threads is supported on Linux only".into()))
    }

    pub(super) fn pin_current(_cpu: usize) -> Result<(), EngineError> {
        Err(EngineError::Load("--pin-threads is supported on Linux only".into()))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_only() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let last = *cpus.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current(last).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
        // The spawning thread keeps its own set.
        assert_eq!(allowed_cpus().unwrap(), cpus);
        assert!(pin_current(1 << 20).is_err());
    }
}
