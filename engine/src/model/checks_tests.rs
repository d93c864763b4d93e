//! The kernel checks on the CPU (the candle-op path): they pass in f32, bf16 and f16, and a
//! corrupted cache fails them.

use candle_core::{DType, Device};

use super::*;

fn assert_all_pass(dtype: DType) {
    let checks = kernel_checks(&Device::Cpu, dtype).unwrap();
    for c in &checks {
        println!("{c}");
    }
    // Two comparisons per case on the CPU (reference and cache contents; no kernel to compare).
    assert_eq!(checks.len(), 2 * CASES.len());
    let failed: Vec<String> =
        checks.iter().filter(|c| !c.passed()).map(|c| c.to_string()).collect();
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n"));
}

#[test]
fn checks_pass_on_cpu_in_f32() {
    assert_all_pass(DType::F32);
}

#[test]
fn checks_pass_on_cpu_in_bf16() {
    assert_all_pass(DType::BF16);
}

#[test]
fn checks_pass_on_cpu_in_f16() {
    assert_all_pass(DType::F16);
}

#[test]
fn a_corrupted_cache_fails_the_attention_check() {
    for dtype in [DType::F32, DType::BF16] {
        let checks = case_checks(&Device::Cpu, dtype, 4, Corruption::ShiftValues).unwrap();
        let attention =
            checks.iter().find(|c| c.name.ends_with("attention vs f64 reference")).unwrap();
        assert!(!attention.passed(), "{attention}");
        // Every output moved by 1 (the weights sum to 1), far beyond any tolerance.
        assert!(attention.max_abs_diff > 0.9, "{attention}");
        let cache = checks.iter().find(|c| c.name.ends_with("cache contents vs writes")).unwrap();
        assert!(!cache.passed(), "{cache}");
    }
}

#[test]
fn the_same_case_uncorrupted_passes() {
    let checks = case_checks(&Device::Cpu, DType::F32, 4, Corruption::None).unwrap();
    assert!(checks.iter().all(KernelCheck::passed), "{checks:?}");
}

#[test]
fn a_nan_difference_fails() {
    assert!(max_abs_diff(&[1.0, f32::NAN, 0.0], &[1.0, 2.0, 0.0]).is_nan());
    assert!(max_abs_diff(&[f32::NAN, 0.0], &[1.0, 5.0]).is_nan());
    let check = KernelCheck { name: "nan".into(), max_abs_diff: f32::NAN, tolerance: 1.0 };
    assert!(!check.passed());
}

#[test]
fn unsupported_dtypes_are_refused() {
    assert!(kernel_checks(&Device::Cpu, DType::U32).is_err());
}
