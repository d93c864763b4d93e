//! The memory roofline of `--random-weights`: device-to-device copy bandwidth measured with candle
//! ops on the benchmark's own device, and what the device says about itself (name, free memory).
//!
//! Two copies are timed, each best of several, synchronised before and after: `Tensor::copy`
//! (on CUDA a driver memcpy into a freshly allocated buffer) and `slice_set` into a buffer
//! allocated beforehand (a copy kernel, no allocation in the timed region). The faster one is the
//! reference: a higher reference only lowers the roofline fractions reported against it. A copy
//! of `n` bytes moves `2n` bytes (read and write), which is how its bandwidth is counted.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

/// Copies timed per method; the best one counts.
const REPS: usize = 5;

/// Result of [`copy_bandwidth`].
#[derive(Debug, Clone, Serialize)]
pub struct CopyBandwidth {
    /// Size of the buffer copied (bytes read; as many are written).
    pub buffer_bytes: usize,
    /// `Tensor::copy` (memcpy into a new buffer), GB/s counting read + write.
    pub memcpy_gb_s: f64,
    /// `slice_set` into an existing buffer (copy kernel), GB/s counting read + write.
    pub kernel_copy_gb_s: f64,
    /// The larger of the two: the roofline reference.
    pub gb_s: f64,
}

/// Measures the copy bandwidth of `device` on a buffer of about `bytes` bytes (rounded down to
/// whole f32 elements, at least one).
pub fn copy_bandwidth(device: &Device, bytes: usize) -> candle_core::Result<CopyBandwidth> {
    let n = (bytes / 4).max(1);
    let buffer_bytes = n * 4;
    // Ones, not zeros: a zeroed host allocation may not be backed by real pages yet.
    let src = Tensor::ones(n, DType::F32, device)?;
    let dst = Tensor::zeros(n, DType::F32, device)?;
    dst.slice_set(&src, 0, 0)?; // touches every page of dst before timing
    let memcpy_s = best_time(device, || src.copy().map(drop))?;
    let kernel_s = best_time(device, || dst.slice_set(&src, 0, 0))?;
    let gb_s = |s: f64| 2.0 * buffer_bytes as f64 / s / 1e9;
    let (memcpy_gb_s, kernel_copy_gb_s) = (gb_s(memcpy_s), gb_s(kernel_s));
    Ok(CopyBandwidth {
        buffer_bytes,
        memcpy_gb_s,
        kernel_copy_gb_s,
        gb_s: memcpy_gb_s.max(kernel_copy_gb_s),
    })
}

/// Shortest wall time of `op` over one untimed warm-up and [`REPS`] timed runs, each between
/// two device synchronisations. Never zero (a clock too coarse to see the copy reads as 1 ns).
fn best_time(
    device: &Device,
    mut op: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    op()?;
    let mut best = f64::INFINITY;
    for _ in 0..REPS {
        device.synchronize()?;
        let start = Instant::now();
        op()?;
        device.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best.max(1e-9))
}

/// What the device reports about itself; empty on the CPU.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceFacts {
    /// E.g. "NVIDIA H100 80GB HBM3".
    pub name: Option<String>,
    pub free_bytes: Option<usize>,
    pub total_bytes: Option<usize>,
}

/// Asks a CUDA device for its name and free/total memory (binaries built with `--features
/// cuda`); the CPU, and a failed query, give empty facts.
pub fn device_facts(device: &Device) -> DeviceFacts {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        let stream = cuda.cuda_stream();
        let ctx = stream.context();
        let mem = ctx.mem_get_info().ok();
        return DeviceFacts {
            name: ctx.name().ok(),
            free_bytes: mem.map(|(free, _)| free),
            total_bytes: mem.map(|(_, total)| total),
        };
    }
    let _ = device;
    DeviceFacts::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_copy_bandwidth_is_positive_and_the_best_of_both() {
        let bw = copy_bandwidth(&Device::Cpu, 4 << 20).unwrap();
        assert_eq!(bw.buffer_bytes, 4 << 20);
        assert!(bw.memcpy_gb_s > 0.0 && bw.memcpy_gb_s.is_finite());
        assert!(bw.kernel_copy_gb_s > 0.0 && bw.kernel_copy_gb_s.is_finite());
        assert_eq!(bw.gb_s, bw.memcpy_gb_s.max(bw.kernel_copy_gb_s));
    }

    #[test]
    fn tiny_buffers_round_to_one_element() {
        assert_eq!(copy_bandwidth(&Device::Cpu, 3).unwrap().buffer_bytes, 4);
    }

    #[test]
    fn the_cpu_has_no_facts() {
        let f = device_facts(&Device::Cpu);
        assert!(f.name.is_none() && f.free_bytes.is_none() && f.total_bytes.is_none());
    }
}
