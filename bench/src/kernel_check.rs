//! `--kernel-check`: the engine's kernel reference checks (`model::checks::kernel_checks`:
//! the device's attention and KV writes against a dense f64 reference, and on CUDA our kernels
//! against candle's generic ops) for one device and each requested dtype, one line per check.

use std::fmt::Write as _;

use ai_sandbox_engine::model::checks::{kernel_checks, KernelCheck};
use ai_sandbox_engine::model::Placement;
use candle_core::{DType, Device};
use serde::Serialize;

use crate::device_error::DeviceBenchError;

/// The dtypes checked when `--dtype` is not given.
pub const ALL_DTYPES: &[&str] = &["bf16", "f16", "f32"];

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    pub dtype: String,
    pub name: String,
    pub max_abs_diff: f32,
    pub tolerance: f32,
    pub passed: bool,
}

impl CheckLine {
    fn new(dtype: &str, c: &KernelCheck) -> Self {
        CheckLine {
            dtype: dtype.to_string(),
            name: c.name.clone(),
            max_abs_diff: c.max_abs_diff,
            tolerance: c.tolerance,
            passed: c.passed(),
        }
    }

    /// `ok    bf16 NAME  max_abs_diff 1.2e-3  tolerance 2.0e-2` (FAIL when not passed).
    pub fn line(&self) -> String {
        format!(
            "{:<5} {:<4} {:<72} max_abs_diff {:>9.3e}  tolerance {:>9.3e}",
            if self.passed { "ok" } else { "FAIL" },
            self.dtype,
            self.name,
            self.max_abs_diff,
            self.tolerance
        )
    }
}

/// The device and dtype `--device D --dtype T` name. `cpu` (the host kernels, which have no
/// device attention) checks the device code on the CPU, like `cpu-tensor`.
fn target(device: &str, dtype: &str) -> Result<(Device, DType), DeviceBenchError> {
    let device = if device.trim() == "cpu" {
        "cpu-tensor"
    } else {
        device
    };
    match Placement::parse(device, Some(dtype), None)? {
        Placement::Device { device, dtype } => Ok((device, dtype)),
        Placement::Host { .. } => Err(DeviceBenchError::Invalid(format!(
            "--device {device}: no device placement to check"
        ))),
    }
}

/// Runs the checks for `device` and each of `dtypes` (empty: [`ALL_DTYPES`]); `log` gets a
/// line as each dtype starts.
pub fn run_kernel_checks(
    device: &str,
    dtypes: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<CheckLine>, DeviceBenchError> {
    let dtypes: Vec<String> = if dtypes.is_empty() {
        ALL_DTYPES.iter().map(|s| s.to_string()).collect()
    } else {
        dtypes.to_vec()
    };
    let mut lines = Vec::new();
    for dt in &dtypes {
        let (dev, dtype) = target(device, dt)?;
        log(&format!("kernel checks on {device}, {dt}"));
        let checks = kernel_checks(&dev, dtype)?;
        if checks.is_empty() {
            return Err(DeviceBenchError::Invalid(format!(
                "no kernel checks ran for {device} {dt}"
            )));
        }
        lines.extend(checks.iter().map(|c| CheckLine::new(dt, c)));
    }
    Ok(lines)
}

/// Every line and a closing count.
pub fn render(lines: &[CheckLine]) -> String {
    let mut s = String::new();
    for l in lines {
        let _ = writeln!(s, "{}", l.line());
    }
    let failed = lines.iter().filter(|l| !l.passed).count();
    let _ = writeln!(
        s,
        "kernel checks: {} passed, {failed} failed",
        lines.len() - failed
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(passed: bool) -> CheckLine {
        CheckLine {
            dtype: "bf16".into(),
            name: "decode gqa 4:1".into(),
            max_abs_diff: 0.5,
            tolerance: 0.02,
            passed,
        }
    }

    #[test]
    fn failures_are_marked_and_counted() {
        let out = render(&[line(true), line(false)]);
        assert!(out.lines().next().unwrap().starts_with("ok "), "{out}");
        assert!(out.lines().nth(1).unwrap().starts_with("FAIL "), "{out}");
        assert!(
            out.ends_with("kernel checks: 1 passed, 1 failed\n"),
            "{out}"
        );
    }

    #[test]
    fn cpu_means_the_device_code_on_the_cpu() {
        let (dev, dtype) = target("cpu", "bf16").unwrap();
        assert!(matches!(dev, Device::Cpu));
        assert_eq!(dtype, DType::BF16);
        assert!(target("cpu", "f64")
            .unwrap_err()
            .to_string()
            .contains("--dtype"));
    }
}
