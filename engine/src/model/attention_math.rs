//! The arithmetic of one attention work item over one KV block (`attention.rs` owns the cache,
//! the work items and the order of the blocks): a group of 8 keys' scores for up to
//! [`MAX_FUSED`] query heads at once, the unnormalized softmax with its vector `exp`, and the
//! weighted sums of values. Generic over the KV element and over `SIMD` (the AVX2 + F16C + FMA
//! build, inlined into `attention.rs`'s `tile_avx2`); every function computes each lane exactly
//! as the portable build does, so the two give the same bits (tests in `attention_tests.rs`).

use super::Elem;

/// `x[i] = exp(x[i] - max)`; returns `max` (-inf for no values) and the sum (8 lanes, then the
/// lanes in order).
#[inline(always)]
pub(super) fn softmax_unnormalized(x: &mut [f32]) -> (f32, f32) {
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
    (max, sum)
}

/// `exp` of 8 values <= 0 (larger ones are not needed here), vectorizable: `2^n * p(r)` with
/// `x = n*ln2 + r`, `|r| <= ln2/2`, and a degree-6 Taylor polynomial (relative error < 2e-7).
/// Values below -87 give about 1e-38 instead of smaller ones (nothing in a softmax notices).
#[inline(always)]
pub(super) fn exp8(x: [f32; LANES]) -> [f32; LANES] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let mut out = [0.0f32; LANES];
    for l in 0..LANES {
        let v = x[l].max(-87.0);
        let t = v * LOG2E + ROUND;
        let n = t - ROUND;
        let r = (v - n * LN2_HI) - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // 2^n from `t`'s bits, which are ROUND's plus n (t lies in ROUND's binade, spacing 1):
        // integer ops that vectorize, where `n as i32` (saturating, NaN -> 0) did not.
        let bits = t.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23;
        out[l] = p * f32::from_bits(bits);
    }
    out
}

pub(super) const LANES: usize = 8;

/// Partial sums per score: dim `d` of a (query, key) dot product goes to partial `d % PARTS`,
/// each accumulated in dim order from 0.0 with fused multiply-adds (`mul_add`: one rounding,
/// FMA in the AVX2 build), and the score is `(p0 + p1) + (p2 + p3)`. Every score is computed
/// exactly so, as a vector lane or alone, whichever heads share the pass.
const PARTS: usize = 4;

/// Query heads whose scores (and weighted values) one pass over a block computes: each key
/// (value) vector is loaded and widened once for all of them, and their partial sums are
/// independent chains (3 heads x 4 partials x 8 lanes fill 12 of AVX2's 16 registers).
pub(super) const MAX_FUSED: usize = 3;

/// The next `H` items of `it` (the heads of one fused pass; the caller knows there are `H`).
#[inline(always)]
pub(super) fn heads<T, const H: usize>(it: &mut impl Iterator<Item = T>) -> [T; H] {
    std::array::from_fn(|_| it.next().expect("a head per fused slot"))
}

/// `out[h][i] = scale * q[h] . key(slot0 + i)` for the keys of one block and KV head and `H`
/// query heads, `kt` its keys transposed (`[head_dim, block_size]`).
#[inline(always)]
pub(super) fn key_scores<E: Elem, const SIMD: bool, const H: usize>(
    q: [&[f32]; H],
    kt: &[E],
    bs: usize,
    slot0: usize,
    mut out: [&mut [f32]; H],
    scale: f32,
) {
    let end = slot0 + out[0].len();
    let mut s = slot0;
    while s < end {
        if bs.is_multiple_of(LANES) {
            // The 8 lanes of the aligned group holding `s` (some may be outside the run: their
            // scores are computed and dropped).
            let g0 = s - s % LANES;
            let lanes = scores8::<E, SIMD, H>(&q, kt, bs, g0);
            let stop = end.min(g0 + LANES);
            for (o, lanes) in out.iter_mut().zip(&lanes) {
                if s == g0 && stop == g0 + LANES {
                    // A whole group: one vector multiply and store (the lanes never go through
                    // memory one by one).
                    let o: &mut [f32; LANES] = (&mut o[s - slot0..stop - slot0]).try_into().expect("8 scores");
                    for l in 0..LANES {
                        o[l] = lanes[l] * scale;
                    }
                } else {
                    for x in s..stop {
                        o[x - slot0] = lanes[x - g0] * scale;
                    }
                }
            }
            s = stop;
        } else {
            for (o, q) in out.iter_mut().zip(&q) {
                o[s - slot0] = score1(q, kt, bs, s) * scale;
            }
            s += 1;
        }
    }
}

/// The dot products of `q[h]` with keys `g0..g0+8` of a transposed block (see [`PARTS`]).
#[inline(always)]
fn scores8<E: Elem, const SIMD: bool, const H: usize>(q: &[&[f32]; H], kt: &[E], bs: usize, g0: usize) -> [[f32; LANES]; H] {
    let hd = q[0].len();
    // Checked once here rather than at every load (the checks cost as much as the arithmetic).
    assert!(g0 + LANES <= bs && kt.len() >= hd * bs && q.iter().all(|q| q.len() == hd));
    // parts[j][h]: head h's partial j.
    let mut parts = [[[0.0f32; LANES]; H]; PARTS];
    // Unrolled by PARTS so that each partial stays in a register.
    let whole = hd - hd % PARTS;
    for d in (0..whole).step_by(PARTS) {
        for (j, pj) in parts.iter_mut().enumerate() {
            let o = (d + j) * bs + g0;
            // SAFETY: d + j < hd, so o + LANES <= hd * bs <= kt.len() (asserted).
            let k = E::get8::<SIMD>(unsafe { kt.get_unchecked(o..o + LANES) });
            for (p, q) in pj.iter_mut().zip(q) {
                // SAFETY: d + j < hd == q.len() (asserted).
                lane_step(p, unsafe { *q.get_unchecked(d + j) }, k);
            }
        }
    }
    for d in whole..hd {
        let o = d * bs + g0;
        // SAFETY: as above.
        let k = E::get8::<SIMD>(unsafe { kt.get_unchecked(o..o + LANES) });
        for (p, q) in parts[d % PARTS].iter_mut().zip(q) {
            lane_step(p, q[d], k);
        }
    }
    // Plain loops, not `array::from_fn`: its closure is compiled without the caller's AVX2 (a
    // call and a `vzeroupper` per group of 8 keys).
    let mut out = [[0.0f32; LANES]; H];
    for (h, o) in out.iter_mut().enumerate() {
        for l in 0..LANES {
            o[l] = (parts[0][h][l] + parts[1][h][l]) + (parts[2][h][l] + parts[3][h][l]);
        }
    }
    out
}

/// `p[l] = qd * k[l] + p[l]` (one rounding) for the 8 lanes.
#[inline(always)]
fn lane_step(p: &mut [f32; LANES], qd: f32, k: [f32; LANES]) {
    for l in 0..LANES {
        p[l] = qd.mul_add(k[l], p[l]);
    }
}

/// The dot product of `q` with key `x` of a transposed block, as one lane of [`scores8`].
#[inline(always)]
pub(super) fn score1<E: Elem>(q: &[f32], kt: &[E], bs: usize, x: usize) -> f32 {
    let mut parts = [0.0f32; PARTS];
    for (d, &qd) in q.iter().enumerate() {
        parts[d % PARTS] = qd.mul_add(kt[d * bs + x].to_f32(), parts[d % PARTS]);
    }
    (parts[0] + parts[1]) + (parts[2] + parts[3])
}

/// Dims of a head one pass of [`accumulate`] keeps in registers per head (with `H` = 3: 12
/// accumulators of 8 lanes).
const ACC_DIMS: usize = 32;

/// `a[h] += w[h][i] * value i` (fused multiply-adds, one rounding each) for each value row of
/// `vals` (`[w[h].len(), head_dim]`), in order, for `H` heads; each value loaded and widened once
/// for all of them, `ACC_DIMS` dims at a time, when the head size `HD` is a constant.
#[inline(always)]
pub(super) fn accumulate<E: Elem, const SIMD: bool, const HD: usize, const H: usize>(a: [&mut [f32]; H], vals: &[E], w: [&[f32]; H]) {
    if HD == 0 || !HD.is_multiple_of(ACC_DIMS) {
        for (a, w) in a.into_iter().zip(w) {
            for (vr, &w) in vals.chunks_exact(a.len()).zip(w) {
                for (a, x) in a.iter_mut().zip(vr) {
                    *a = w.mul_add(x.to_f32(), *a);
                }
            }
        }
        return;
    }
    let n = w[0].len();
    assert!(vals.len() >= n * HD && w.iter().all(|w| w.len() == n) && a.iter().all(|a| a.len() == HD));
    for c0 in (0..HD).step_by(ACC_DIMS) {
        let mut r = [[0.0f32; ACC_DIMS]; H];
        for h in 0..H {
            r[h].copy_from_slice(&a[h][c0..c0 + ACC_DIMS]);
        }
        for i in 0..n {
            for d0 in (0..ACC_DIMS).step_by(LANES) {
                let o = i * HD + c0 + d0;
                // SAFETY: i < n, c0 + d0 + LANES <= HD, so o + LANES <= n * HD <= vals.len().
                let v = E::get8::<SIMD>(unsafe { vals.get_unchecked(o..o + LANES) });
                for h in 0..H {
                    // SAFETY: i < n == w[h].len() (asserted).
                    let wi = unsafe { *w[h].get_unchecked(i) };
                    for l in 0..LANES {
                        r[h][d0 + l] = wi.mul_add(v[l], r[h][d0 + l]);
                    }
                }
            }
        }
        for h in 0..H {
            a[h][c0..c0 + ACC_DIMS].copy_from_slice(&r[h]);
        }
    }
}
