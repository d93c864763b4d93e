//! Numeric checks of the device attention path (`DeviceKv::write` + `DeviceKv::attend`: our CUDA
//! kernels on a CUDA device, the candle-op versions elsewhere) on random data, for
//! `ai-sandbox-bench --kernel-check` (run on a GPU machine by `scripts/gpu-check`) and the unit
//! tests (on the CPU).
//!
//! Each case is one geometry (head size 64 to 256, 1:1 to 8:1 grouped-query attention, with or
//! without a sliding window shorter than the sequences) run through the same schedule: several
//! sequences in one batch with mixed lengths and start positions, a prompt prefilled in two
//! chunks, then decode steps, over scattered and decreasing block tables. Every step's output is
//! compared with a dense f64 attention computed on the host from the same dtype-rounded inputs,
//! the cache contents with a host copy of what was written (bit for bit), and on CUDA the kernel
//! with `attend_generic` over the same cache.

use std::fmt;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::attention::{Geometry, Span};
use super::device_attention::{attend_generic, DeviceBatch, DeviceKv};
use super::KV_BLOCK_SIZE;
use crate::EngineError;

/// One comparison: the largest absolute difference seen and what is allowed.
#[derive(Debug, Clone)]
pub struct KernelCheck {
    pub name: String,
    pub max_abs_diff: f32,
    pub tolerance: f32,
}

impl KernelCheck {
    /// Within tolerance (a NaN difference fails).
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= self.tolerance
    }
}

impl fmt::Display for KernelCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "ok" } else { "FAILED" };
        write!(
            f,
            "{verdict:6} {}: max |diff| {:.3e} (tolerance {:.1e})",
            self.name, self.max_abs_diff, self.tolerance
        )
    }
}

/// A geometry to check.
struct Case {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    /// Multiplies the queries: 4 makes scores spread over about +-20, so a few keys dominate and
    /// the running max of the online softmax moves a lot.
    q_gain: f32,
}

const CASES: [Case; 8] = [
    Case { n_heads: 4, n_kv_heads: 4, head_dim: 64, window: None, q_gain: 1.0 },
    Case { n_heads: 16, n_kv_heads: 2, head_dim: 64, window: Some(20), q_gain: 1.0 },
    Case { n_heads: 4, n_kv_heads: 2, head_dim: 80, window: Some(17), q_gain: 1.0 },
    Case { n_heads: 6, n_kv_heads: 6, head_dim: 96, window: None, q_gain: 4.0 },
    Case { n_heads: 8, n_kv_heads: 2, head_dim: 128, window: Some(24), q_gain: 1.0 },
    Case { n_heads: 32, n_kv_heads: 4, head_dim: 128, window: None, q_gain: 4.0 },
    Case { n_heads: 32, n_kv_heads: 8, head_dim: 128, window: Some(5), q_gain: 1.0 },
    Case { n_heads: 8, n_kv_heads: 4, head_dim: 256, window: Some(40), q_gain: 1.0 },
];

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "head_dim {} heads {}/{}", self.head_dim, self.n_heads, self.n_kv_heads)?;
        match self.window {
            Some(w) => write!(f, " window {w}")?,
            None => write!(f, " no window")?,
        }
        if self.q_gain != 1.0 {
            write!(f, " sharp")?;
        }
        Ok(())
    }
}

/// The batches, in order: each span is (sequence, first position, tokens), in row order.
/// Sequence 0 is prefilled in two chunks (33 + 37) and then decodes; the others join later with
/// shorter prompts; the rows of a step are not in sequence order.
const SCHEDULE: [&[(usize, usize, usize)]; 5] = [
    &[(0, 0, 33), (2, 0, 5)],
    &[(0, 33, 37), (1, 0, 21), (2, 5, 1)],
    &[(1, 21, 1), (0, 70, 1), (2, 6, 1)],
    &[(0, 71, 1), (3, 0, 17), (1, 22, 1), (2, 7, 1)],
    &[(3, 17, 1), (0, 72, 1)],
];

/// Final length of each sequence of [`SCHEDULE`].
const SEQ_LENS: [usize; 4] = [73, 23, 8, 18];

/// Blocks in the cache: more than the sequences use, so some slots stay zero.
const N_BLOCKS: usize = 14;

/// What to break on purpose (the unit test shows that the checks can fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corruption {
    None,
    /// Add 1 to every cached value after the last step's write: every output moves by 1.
    ShiftValues,
}

/// The largest error a correct implementation may show in `dtype`, on outputs below 1 in
/// magnitude (they are weighted averages of values drawn from [-1, 1)). The inputs the reference
/// sees are already rounded to `dtype`, so what remains is f32 arithmetic (exp, sums over at most
/// 73 keys: about 1e-6) and the rounding of the output to `dtype`: half an ulp against the f64
/// reference, up to one ulp between two f32 implementations that round on either side of a
/// boundary. In [0.5, 1) an ulp is 2^-8 = 3.9e-3 in bf16 and 2^-11 = 4.9e-4 in f16, so four ulps
/// leave room without hiding a wrong key or weight (those move outputs by 1e-2..1).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 4.0 * 3.9e-3,
        DType::F16 => 4.0 * 4.9e-4,
        _ => 1e-4,
    }
}

/// Runs every case on `device` in `dtype` (bf16, f16 or f32) and returns the comparisons: per
/// case the attention against the f64 reference and the cache contents against what was
/// written, and on CUDA also our kernel against the candle-op version.
pub fn kernel_checks(device: &Device, dtype: DType) -> Result<Vec<KernelCheck>, EngineError> {
    if !matches!(dtype, DType::BF16 | DType::F16 | DType::F32) {
        return Err(EngineError::invalid(
            format!("kernel checks run in bf16, f16 or f32, not {dtype:?}"),
            None,
        ));
    }
    let mut checks = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        checks.extend(run_case(device, dtype, case, 1000 + i as u64, Corruption::None)?);
    }
    Ok(checks)
}

/// The checks of case `index` of [`CASES`] with `corruption` applied.
#[cfg(test)]
pub(crate) fn case_checks(
    device: &Device,
    dtype: DType,
    index: usize,
    corruption: Corruption,
) -> Result<Vec<KernelCheck>, EngineError> {
    run_case(device, dtype, &CASES[index], 1000 + index as u64, corruption)
}

/// Host copies of everything the device was given, as the device holds it (dtype-rounded).
struct Mirror {
    /// Per sequence, per position: the key and value rows, `kv_heads * head_dim` each.
    keys: Vec<Vec<Vec<f32>>>,
    values: Vec<Vec<Vec<f32>>>,
    /// The whole caches, `[slots, kv_heads * head_dim]`, zero where nothing was written.
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

fn run_case(
    device: &Device,
    dtype: DType,
    case: &Case,
    seed: u64,
    corruption: Corruption,
) -> Result<Vec<KernelCheck>, EngineError> {
    let g = Geometry {
        n_heads: case.n_heads,
        n_kv_heads: case.n_kv_heads,
        head_dim: case.head_dim,
        block_size: KV_BLOCK_SIZE,
        sliding_window: case.window,
    };
    let (hd, width) = (g.head_dim, g.n_kv_heads * g.head_dim);
    let mut rng = StdRng::seed_from_u64(seed);
    let tables = block_tables(&mut rng);
    let mut kv = DeviceKv::new(&g, N_BLOCKS, dtype, device)?;
    let n_slots = N_BLOCKS * KV_BLOCK_SIZE;
    let mut mirror = Mirror {
        keys: vec![Vec::new(); SEQ_LENS.len()],
        values: vec![Vec::new(); SEQ_LENS.len()],
        k_cache: vec![0.0; n_slots * width],
        v_cache: vec![0.0; n_slots * width],
    };
    let (mut vs_reference, mut vs_generic) = (0f32, 0f32);
    for (step, plan) in SCHEDULE.iter().enumerate() {
        let mut spans = Vec::with_capacity(plan.len());
        let mut row = 0;
        for &(seq, pos, len) in plan.iter() {
            spans.push(Span { row, len, pos, blocks: &tables[seq] });
            row += len;
        }
        let rows = row;
        let (q, q_host) =
            upload(&mut rng, (rows, g.n_heads, hd), 2.0 * case.q_gain, dtype, device)?;
        let (k, k_host) = upload(&mut rng, (rows, g.n_kv_heads, hd), 2.0, dtype, device)?;
        let (v, v_host) = upload(&mut rng, (rows, g.n_kv_heads, hd), 1.0, dtype, device)?;
        let batch = DeviceBatch::new(&g, &spans, device)?;
        kv.write(&batch, &k, &v)?;
        for (&(seq, pos, len), span) in plan.iter().zip(&spans) {
            for i in 0..len {
                let (p, r) = (pos + i, span.row + i);
                debug_assert_eq!(
                    mirror.keys[seq].len(),
                    p,
                    "the schedule writes each position once, in order"
                );
                let (k_row, v_row) =
                    (&k_host[r * width..(r + 1) * width], &v_host[r * width..(r + 1) * width]);
                mirror.keys[seq].push(k_row.to_vec());
                mirror.values[seq].push(v_row.to_vec());
                let slot =
                    tables[seq][p / KV_BLOCK_SIZE] as usize * KV_BLOCK_SIZE + p % KV_BLOCK_SIZE;
                mirror.k_cache[slot * width..(slot + 1) * width].copy_from_slice(k_row);
                mirror.v_cache[slot * width..(slot + 1) * width].copy_from_slice(v_row);
            }
        }
        if corruption == Corruption::ShiftValues && step == SCHEDULE.len() - 1 {
            kv.v = (&kv.v + 1.0)?;
        }
        let out = kv.attend(&g, &batch, &q)?;
        let out_host = host(&out)?;
        let expected = reference(&g, plan, &spans, &q_host, &mirror);
        vs_reference = vs_reference.max(max_abs_diff(&out_host, &expected));
        if device.is_cuda() {
            let generic = host(&attend_generic(&kv, &g, &batch, &q)?)?;
            vs_generic = vs_generic.max(max_abs_diff(&out_host, &generic));
        }
    }
    let cache_diff = max_abs_diff(&host(&kv.k)?, &mirror.k_cache)
        .max(max_abs_diff(&host(&kv.v)?, &mirror.v_cache));
    let name = case.to_string();
    let tol = tolerance(dtype);
    let mut checks = vec![
        KernelCheck {
            name: format!("{name}: attention vs f64 reference"),
            max_abs_diff: vs_reference,
            tolerance: tol,
        },
        // A write copies bits: anything but an exact match is a wrong slot or a torn row.
        KernelCheck {
            name: format!("{name}: cache contents vs writes"),
            max_abs_diff: cache_diff,
            tolerance: 0.0,
        },
    ];
    if device.is_cuda() {
        checks.push(KernelCheck {
            name: format!("{name}: kernel vs attend_generic"),
            max_abs_diff: vs_generic,
            tolerance: tol,
        });
    }
    Ok(checks)
}

/// One block table per sequence, covering its final length: blocks drawn from a shuffle of the
/// cache's blocks (so scattered and out of order), sequence 0's sorted in decreasing order.
fn block_tables(rng: &mut StdRng) -> Vec<Vec<u32>> {
    let mut free: Vec<u32> = (0..N_BLOCKS as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.random_range(0..=i));
    }
    let mut tables = Vec::with_capacity(SEQ_LENS.len());
    for (seq, len) in SEQ_LENS.iter().enumerate() {
        let mut table: Vec<u32> = free.drain(..len.div_ceil(KV_BLOCK_SIZE)).collect();
        if seq == 0 {
            table.sort_unstable_by(|a, b| b.cmp(a));
        }
        tables.push(table);
    }
    tables
}

/// Uniform values in [-scale, scale) of `shape`, on `device` in `dtype`, and their host copy
/// after the rounding to `dtype` (what the device computes with).
fn upload(
    rng: &mut StdRng,
    shape: (usize, usize, usize),
    scale: f32,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Vec<f32>), EngineError> {
    let n = shape.0 * shape.1 * shape.2;
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    let t = Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?;
    let rounded = host(&t)?;
    Ok((t, rounded))
}

/// All elements of `t` as f32 on the host.
fn host(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    // A NaN on either side must fail the check, so it is not left to `max` (which drops NaNs).
    a.iter().zip(b).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f32::NAN
        } else if m.is_nan() {
            m
        } else {
            m.max(d)
        }
    })
}

/// Dense attention in f64 of one query row (one head) over the keys/values at positions
/// `positions`: softmax(q.k / sqrt(head_dim)) . v. Shared by these checks and the host
/// attention's tests.
pub(crate) fn reference_row<'a>(
    q: &[f32],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    positions: std::ops::RangeInclusive<usize>,
) -> Vec<f64> {
    let scale = 1.0 / (q.len() as f64).sqrt();
    let scores: Vec<f64> = positions
        .clone()
        .map(|j| q.iter().zip(key(j)).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale)
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0f64; q.len()];
    for (j, w) in positions.zip(&weights) {
        for (o, &v) in out.iter_mut().zip(value(j)) {
            *o += w * v as f64;
        }
    }
    out.iter_mut().for_each(|o| *o /= total);
    out
}

/// Dense attention in f64 of every row of the step over its sequence's mirrored keys/values:
/// `[rows, n_heads, head_dim]` flattened.
fn reference(
    g: &Geometry,
    plan: &[(usize, usize, usize)],
    spans: &[Span],
    q: &[f32],
    mirror: &Mirror,
) -> Vec<f32> {
    let (nh, hd) = (g.n_heads, g.head_dim);
    let group = g.n_heads / g.n_kv_heads;
    let rows: usize = spans.iter().map(|s| s.len).sum();
    let mut out = vec![0f32; rows * nh * hd];
    for (&(seq, pos, len), span) in plan.iter().zip(spans) {
        let (keys, values) = (&mirror.keys[seq], &mirror.values[seq]);
        for i in 0..len {
            let p = pos + i;
            let first = g.sliding_window.map_or(0, |w| (p + 1).saturating_sub(w));
            for h in 0..nh {
                let kv_off = (h / group) * hd;
                let q_row = &q[((span.row + i) * nh + h) * hd..][..hd];
                let key = |j: usize| &keys[j][kv_off..kv_off + hd];
                let value = |j: usize| &values[j][kv_off..kv_off + hd];
                let row = reference_row(q_row, key, value, first..=p);
                let o = &mut out[((span.row + i) * nh + h) * hd..][..hd];
                for (od, r) in o.iter_mut().zip(row) {
                    *od = r as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
