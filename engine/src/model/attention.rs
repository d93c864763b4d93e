//! Attention over the paged KV cache, on the CPU, in plain Rust: RoPE at each token's own
//! position, writing a batch's keys/values into its sequences' blocks, and causal (optionally
//! sliding-window) grouped-query attention of every query over its own sequence's blocks.
//!
//! Storage of one layer (`LayerKv`): keys and values each `[n_blocks, kv_heads, block_size,
//! head_dim]` f32, so one KV head's keys inside a block are contiguous. Allocated zeroed
//! (untouched pages cost no RSS).
//!
//! Determinism (what batching and the prefix cache rely on): every output row depends only on
//! its own query and its own sequence's keys/values, summed in position order; which other
//! sequences share the batch, how a prompt was chunked, the thread count and the instruction set
//! change nothing, bit for bit (the AVX2 build of the loops differs only in register width: the
//! per-lane arithmetic and the reduction order are the same, and Rust never fuses a*b+c).

use rayon::prelude::*;

use super::config::RopeStyle;
use crate::kernels::{isa, Isa};

/// A sequence's slice of a batch: rows `row..row+len` of the batch are its tokens at positions
/// `pos..pos+len`; `blocks` is its block table (covering at least `pos+len` positions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span<'a> {
    pub row: usize,
    pub len: usize,
    pub pos: usize,
    pub blocks: &'a [u32],
}

/// Shape facts attention needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub sliding_window: Option<usize>,
}

/// One layer's keys and values.
pub(crate) struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerKv {
    pub(crate) fn new(g: &Geometry, n_blocks: usize) -> LayerKv {
        let n = n_blocks * g.n_kv_heads * g.block_size * g.head_dim;
        LayerKv { k: vec![0.0; n], v: vec![0.0; n] }
    }

    fn offset(g: &Geometry, block: u32, kv_head: usize, slot: usize) -> usize {
        ((block as usize * g.n_kv_heads + kv_head) * g.block_size + slot) * g.head_dim
    }

    /// Stores the keys/values (`[rows, kv_heads*head_dim]`) of every span at its positions.
    pub(crate) fn write(&mut self, g: &Geometry, spans: &[Span], k: &[f32], v: &[f32]) {
        let (hd, width) = (g.head_dim, g.n_kv_heads * g.head_dim);
        for s in spans {
            for i in 0..s.len {
                let p = s.pos + i;
                let block = s.blocks[p / g.block_size];
                let row = (s.row + i) * width;
                for kvh in 0..g.n_kv_heads {
                    let dst = Self::offset(g, block, kvh, p % g.block_size);
                    let src = row + kvh * hd;
                    self.k[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    self.v[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
        }
    }
}

/// Queries per parallel work item (a tile of one sequence's tokens for one head).
const QUERY_TILE: usize = 16;

/// `q`: `[rows, heads*head_dim]`, already rotated and NOT yet scaled. Returns the attention
/// output `[rows, heads*head_dim]`. The keys/values of every span must have been written.
pub(crate) fn attend(kv: &LayerKv, g: &Geometry, spans: &[Span], q: &[f32]) -> Vec<f32> {
    let (nh, hd) = (g.n_heads, g.head_dim);
    let rows: usize = spans.iter().map(|s| s.row + s.len).max().unwrap_or(0);
    let mut items = Vec::new();
    for (si, s) in spans.iter().enumerate() {
        for h in 0..nh {
            for t0 in (0..s.len).step_by(QUERY_TILE) {
                items.push((si, h, t0, QUERY_TILE.min(s.len - t0)));
            }
        }
    }
    let use_avx2 = isa() != Isa::Scalar;
    let results: Vec<Vec<f32>> = items
        .par_iter()
        .map(|&(si, h, t0, n)| {
            let mut out = vec![0.0f32; n * hd];
            let mut scratch = Vec::new();
            #[cfg(target_arch = "x86_64")]
            if use_avx2 {
                // SAFETY: Isa other than Scalar is only chosen when AVX2+FMA are available.
                unsafe { tile_avx2(kv, g, &spans[si], h, t0, q, &mut out, &mut scratch) };
                return out;
            }
            let _ = use_avx2;
            tile(kv, g, &spans[si], h, t0, q, &mut out, &mut scratch);
            out
        })
        .collect();
    let mut out = vec![0.0f32; rows * nh * hd];
    for (&(si, h, t0, n), r) in items.iter().zip(&results) {
        for i in 0..n {
            let dst = (spans[si].row + t0 + i) * nh * hd + h * hd;
            out[dst..dst + hd].copy_from_slice(&r[i * hd..(i + 1) * hd]);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    kv: &LayerKv,
    g: &Geometry,
    s: &Span,
    h: usize,
    t0: usize,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    tile(kv, g, s, h, t0, q, out, scratch)
}

/// Attention of queries `t0..t0+out.len()/head_dim` of span `s` for head `h`. Common head sizes
/// get a version with the head held in registers; the arithmetic of a (query, key) pair is the
/// same in all of them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile(
    kv: &LayerKv,
    g: &Geometry,
    s: &Span,
    h: usize,
    t0: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    match g.head_dim {
        64 => tile_hd::<64>(kv, g, s, h, t0, q, out, scores),
        128 => tile_hd::<128>(kv, g, s, h, t0, q, out, scores),
        _ => tile_any(kv, g, s, h, t0, q, out, scores),
    }
}

/// Calls `f(offset, slots)` for each run of keys `first..=p` that lies in one block
/// (`offset` into the layer's K/V storage of the run's first key).
#[inline(always)]
fn for_each_run(g: &Geometry, s: &Span, kvh: usize, first: usize, p: usize, mut f: impl FnMut(usize, usize)) {
    let bs = g.block_size;
    let mut j = first;
    while j <= p {
        let (b, slot0) = (s.blocks[j / bs], j % bs);
        let slots = (bs - slot0).min(p + 1 - j);
        f(LayerKv::offset(g, b, kvh, slot0), slots);
        j += slots;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_hd<const HD: usize>(
    kv: &LayerKv,
    g: &Geometry,
    s: &Span,
    h: usize,
    t0: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let nh = g.n_heads;
    let kvh = h / (nh / g.n_kv_heads);
    let scale = 1.0 / (HD as f32).sqrt();
    for (i, o) in out.chunks_exact_mut(HD).enumerate() {
        let t = t0 + i;
        let p = s.pos + t;
        let first = g.sliding_window.map_or(0, |w| (p + 1).saturating_sub(w));
        let mut qr = [0.0f32; HD];
        qr.copy_from_slice(&q[(s.row + t) * nh * HD + h * HD..][..HD]);
        scores.clear();
        for_each_run(g, s, kvh, first, p, |base, slots| {
            let keys = &kv.k[base..base + slots * HD];
            let mut quads = keys.chunks_exact(4 * HD);
            for k4 in &mut quads {
                let d = dot4::<HD>(&qr, k4);
                scores.extend(d.iter().map(|x| x * scale));
            }
            for kr in quads.remainder().chunks_exact(HD) {
                scores.push(dot(&qr, kr) * scale);
            }
        });
        let sum = softmax_unnormalized(scores);
        let mut acc = [0.0f32; HD];
        let mut n = 0;
        for_each_run(g, s, kvh, first, p, |base, slots| {
            for vr in kv.v[base..base + slots * HD].chunks_exact(HD) {
                let a = scores[n];
                for d in 0..HD {
                    acc[d] += a * vr[d];
                }
                n += 1;
            }
        });
        let inv = 1.0 / sum;
        for (o, a) in o.iter_mut().zip(acc) {
            *o = a * inv;
        }
    }
}

/// [`tile_hd`] for any head size.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_any(
    kv: &LayerKv,
    g: &Geometry,
    s: &Span,
    h: usize,
    t0: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let (nh, hd) = (g.n_heads, g.head_dim);
    let kvh = h / (nh / g.n_kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    for (i, o) in out.chunks_exact_mut(hd).enumerate() {
        let t = t0 + i;
        let p = s.pos + t;
        let first = g.sliding_window.map_or(0, |w| (p + 1).saturating_sub(w));
        let qrow = &q[(s.row + t) * nh * hd + h * hd..][..hd];
        scores.clear();
        for_each_run(g, s, kvh, first, p, |base, slots| {
            for kr in kv.k[base..base + slots * hd].chunks_exact(hd) {
                scores.push(dot(qrow, kr) * scale);
            }
        });
        let sum = softmax_unnormalized(scores);
        o.fill(0.0);
        let mut n = 0;
        for_each_run(g, s, kvh, first, p, |base, slots| {
            for vr in kv.v[base..base + slots * hd].chunks_exact(hd) {
                axpy(o, scores[n], vr);
                n += 1;
            }
        });
        let inv = 1.0 / sum;
        for x in o.iter_mut() {
            *x *= inv;
        }
    }
}

/// `x[i] = exp(x[i] - max)`; returns the sum (8 lanes, then the lanes in order).
#[inline(always)]
fn softmax_unnormalized(x: &mut [f32]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut lanes = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        let mut v = [0.0f32; LANES];
        for l in 0..LANES {
            v[l] = c[l] - max;
        }
        let e = exp8(v);
        c.copy_from_slice(&e);
        for l in 0..LANES {
            lanes[l] += e[l];
        }
    }
    let mut sum = 0.0;
    for l in lanes {
        sum += l;
    }
    for v in chunks.into_remainder() {
        let mut e = [0.0f32; LANES];
        e[0] = *v - max;
        *v = exp8(e)[0];
        sum += *v;
    }
    sum
}

/// `exp` of 8 values <= 0 (larger ones are not needed here), vectorizable: `2^n * p(r)` with
/// `x = n*ln2 + r`, `|r| <= ln2/2`, and a degree-6 Taylor polynomial (relative error < 2e-7).
/// Values below -87 give about 1e-38 instead of smaller ones (nothing in a softmax notices).
#[inline(always)]
fn exp8(x: [f32; LANES]) -> [f32; LANES] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let mut out = [0.0f32; LANES];
    for l in 0..LANES {
        let v = x[l].max(-87.0);
        let n = (v * LOG2E + ROUND) - ROUND;
        let r = (v - n * LN2_HI) - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        let bits = ((n as i32 + 127) as u32) << 23;
        out[l] = p * f32::from_bits(bits);
    }
    out
}

/// Four dot products of `q` with the consecutive keys in `k4`; each is computed exactly as
/// [`dot`] computes it (same lanes, same order), only interleaved.
#[inline(always)]
fn dot4<const HD: usize>(q: &[f32; HD], k4: &[f32]) -> [f32; 4] {
    let mut acc = [[0.0f32; LANES]; 4];
    for c in 0..HD / LANES {
        for (j, a) in acc.iter_mut().enumerate() {
            let k = &k4[j * HD + c * LANES..][..LANES];
            for l in 0..LANES {
                a[l] += q[c * LANES + l] * k[l];
            }
        }
    }
    acc.map(|a| {
        let mut s = 0.0;
        for l in a {
            s += l;
        }
        s
    })
}

const LANES: usize = 8;

/// Dot product summed in 8 independent lanes, then the lanes in order (vectorizes without
/// reassociation).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0.0;
    for l in acc {
        s += l;
    }
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `o += a * x`.
#[inline(always)]
fn axpy(o: &mut [f32], a: f32, x: &[f32]) {
    for (o, x) in o.iter_mut().zip(x) {
        *o += a * x;
    }
}

/// Rotates the first `2*half` dims of every head of `x` (`[rows, heads*head_dim]`) by the angle
/// tables (`[positions, half]`) at each row's position.
pub(crate) fn rope(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    style: RopeStyle,
) {
    let half = head_dim / 2;
    for (row, &p) in x.chunks_exact_mut(heads * head_dim).zip(positions) {
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c[i] - x1 * s[i];
                head[b] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
