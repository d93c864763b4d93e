//! AVX-512 VNNI kernels for Q4_1 x Q8_1 and Q8_0/Q4_0 x Q8_0 over the panel layout (`panel.rs`):
//! one 512-bit vector holds 16 weight rows, so a token's 4 activation quants broadcast to all
//! lanes (an embedded broadcast of `vpdpbusd`'s memory operand) give 16 rows' integer sums
//! with no shuffle, no horizontal sum and no copy of the weights; a block's weights, unpacked
//! once, serve up to 8 tokens.
//!
//! Every lane runs the scalar reference's arithmetic (`q4_1::row_dots_scalar`,
//! `q8_0::scalar_dots`) operation for operation: the exact integer block sum (Q8_0's weights
//! are stored `+ 128`, taken back out as `128 * sum(x)`; Q4_0's nibbles multiply as stored and
//! the `- 8` comes out as `8 * sum(x)`), `as f32 * (d_w * d_x)` (`+ m_w * s_x` for Q4_1), added
//! to the row's sum block by block. So the results equal scalar bit for bit
//! whatever the batch (the invariant of `matrix.rs`), and the tests compare bits.
//!
//! Also the driver every panel kernel shares ([`panels`]: panels by token tiles of up to 8,
//! masked stores at the ragged end) and the trait its tiles implement ([`Tiles`]; the
//! K-quants' are in `avx512_panel_k.rs`).

use std::arch::x86_64::*;

use super::matrix::QK;
use super::panel::{self, ROWS};
use super::q4_1::Q8_1Rows;
use super::q8_0::Q8_0Rows;

// The offsets the tiles use: the f16 fields after the quants (Q4_1's `m` 32 bytes after `d`).
const _: () = assert!(Q4_1_SPEC.seg_base(1) == 256 && Q8_0_SPEC.seg_base(1) == 512 && Q4_0_SPEC.seg_base(1) == 256);

/// Weight formats (const generic `K`).
const Q4_1: u8 = 0;
const Q8_0: u8 = 1;
const Q4_0: u8 = 2;

/// Panel layout of each format.
pub(super) use panel::{Q4_0_SPEC, Q4_1_SPEC, Q8_0_SPEC};

const fn spec(k: u8) -> panel::Spec {
    match k {
        Q4_1 => Q4_1_SPEC,
        Q8_0 => Q8_0_SPEC,
        _ => Q4_0_SPEC,
    }
}

/// Whether this CPU runs these kernels.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
}

/// What the tiles read: row-major activations and, for Q8_0 and Q4_0, each block's quant sum.
struct Acts<'a> {
    l: usize,
    nb: usize,
    qs: &'a [i8],
    d: &'a [f32],
    /// Q4_1: `s_x`; Q8_0 and Q4_0: empty.
    s: &'a [f32],
    /// Q8_0 and Q4_0: `sum(q_x)` per block; Q4_1: empty.
    sums: &'a [i32],
}

/// `y[t][i]` = dot of weight row `i` (of the panels `w`) with token `t`, for the `y[t].len()`
/// rows the panels hold (the rest of the last panel is padding): `y` has one slice per token,
/// all of the same length. Panics unless [`available`].
pub(super) fn dots_q4_1(w: &[u8], a: &Q8_1Rows, y: &mut [&mut [f32]]) {
    let acts = Acts { l: a.l, nb: a.nb, qs: &a.qs, d: &a.d, s: &a.s, sums: &[] };
    dots::<Q4_1>(w, &acts, y)
}

/// As [`dots_q4_1`] for Q8_0 weights (with the activation blocks' quant sums,
/// `Q8_0Rows::block_sums`).
pub(super) fn dots_q8_0(w: &[u8], a: &Q8_0Rows, y: &mut [&mut [f32]]) {
    dots::<Q8_0>(w, &q8_acts(a), y)
}

/// As [`dots_q8_0`] for Q4_0 weights.
pub(super) fn dots_q4_0(w: &[u8], a: &Q8_0Rows, y: &mut [&mut [f32]]) {
    dots::<Q4_0>(w, &q8_acts(a), y)
}

fn q8_acts(a: &Q8_0Rows) -> Acts<'_> {
    Acts { l: a.l, nb: a.nb, qs: &a.qs, d: &a.d, s: &[], sums: a.block_sums() }
}

fn dots<const K: u8>(w: &[u8], a: &Acts, y: &mut [&mut [f32]]) {
    let (l, nb) = (a.l, a.nb);
    let rows = y.first().map_or(0, |y| y.len());
    if l == 0 || rows == 0 {
        return;
    }
    assert!(available(), "AVX-512 VNNI panel kernel on a CPU without it");
    // These checks make every pointer access of the tiles in bounds.
    assert!(y.len() == l && y.iter().all(|y| y.len() == rows));
    assert!(w.len() >= rows.div_ceil(ROWS) * nb * spec(K).panel_block_bytes());
    assert!(a.qs.len() >= l * nb * QK && a.d.len() >= l * nb);
    assert!(K != Q4_1 || a.s.len() >= l * nb);
    assert!(K == Q4_1 || a.sums.len() >= l * nb);
    // SAFETY: the features were checked just above; the bounds by the asserts.
    unsafe { panels(w, nb * spec(K).panel_block_bytes(), &Small::<K>(a), y) }
}

/// A format's tile: one panel against up to 8 tokens.
pub(super) trait Tiles {
    /// Panel `wp` against tokens `t0..t0+T`: one vector of 16 rows' dots per token.
    /// Safety: AVX-512 F/BW/VNNI and F16C; the panel and the tokens within what the caller of
    /// [`panels`] checked.
    unsafe fn tile<const T: usize>(&self, wp: *const u8, t0: usize) -> [__m512; T];
}

/// The formats of this file as [`Tiles`].
struct Small<'a, const K: u8>(&'a Acts<'a>);

impl<const K: u8> Tiles for Small<'_, K> {
    #[inline(always)]
    unsafe fn tile<const T: usize>(&self, wp: *const u8, t0: usize) -> [__m512; T] {
        // SAFETY: as the trait's.
        unsafe { tile::<K, T>(wp, self.0, t0) }
    }
}

/// `y[t][i]` for every token `t` and row `i` of `y` (one slice per token, all `rows` long)
/// from the panels `w` (`pbytes` per panel), by tiles of up to 8 tokens.
/// Safety: AVX-512 F/BW/VNNI and F16C available; `w` holds `rows.div_ceil(16)` panels and `a`
/// every token of `y` (the callers' asserts).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn panels<A: Tiles>(w: &[u8], pbytes: usize, a: &A, y: &mut [&mut [f32]]) {
    let (l, rows) = (y.len(), y[0].len());
    for p in 0..rows.div_ceil(ROWS) {
        let wp = w[p * pbytes..].as_ptr();
        let here = (rows - p * ROWS).min(ROWS);
        // Lanes past the matrix's end (the padding rows) are not stored.
        let mask: __mmask16 = if here == ROWS { !0 } else { (1 << here) - 1 };
        let mut t0 = 0;
        while t0 < l {
            let n = (l - t0).min(8);
            let mut out = [_mm512_setzero_ps(); 8];
            // SAFETY: panel `p` and tokens t0..t0+n are within what the caller checked.
            unsafe {
                match n {
                    1 => out[..1].copy_from_slice(&a.tile::<1>(wp, t0)),
                    2 => out[..2].copy_from_slice(&a.tile::<2>(wp, t0)),
                    3 => out[..3].copy_from_slice(&a.tile::<3>(wp, t0)),
                    4 => out[..4].copy_from_slice(&a.tile::<4>(wp, t0)),
                    5 => out[..5].copy_from_slice(&a.tile::<5>(wp, t0)),
                    6 => out[..6].copy_from_slice(&a.tile::<6>(wp, t0)),
                    7 => out[..7].copy_from_slice(&a.tile::<7>(wp, t0)),
                    _ => out = a.tile::<8>(wp, t0),
                }
            }
            for (j, v) in out.iter().enumerate().take(n) {
                // SAFETY: rows p*16 .. p*16+here of token t0+j's slice (`here` lanes by the mask).
                unsafe { _mm512_mask_storeu_ps(y[t0 + j].as_mut_ptr().add(p * ROWS), mask, *v) };
            }
            t0 += n;
        }
    }
}

/// Asks for the `len` bytes at `p` in L1: a panel block some blocks ahead (past the panel's
/// end: the next panel's, or nothing; a hint never faults, so `p` may point anywhere).
#[inline(always)]
pub(super) fn prefetch(p: *const u8, len: usize) {
    let mut o = 0;
    while o < len {
        // SAFETY: a prefetch reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o) as *const i8) };
        o += 64;
    }
}

/// Panel blocks ahead that [`tile`] prefetches (4 left the single-token output matmul, which
/// streams 30 MB from DRAM, 0.8x the lane kernels; 16: 1.4x).
const PREFETCH: usize = 16;

/// One panel (16 rows, `a.nb` blocks at `wp`) against tokens `t0..t0+T`: one vector of 16
/// rows per token. Safety: as [`panels`], with the panel and the tokens in bounds.
#[inline(always)]
unsafe fn tile<const K: u8, const T: usize>(wp: *const u8, a: &Acts, t0: usize) -> [__m512; T] {
    let (nb, pbb) = (a.nb, spec(K).panel_block_bytes());
    let mut acc = [_mm512_setzero_ps(); T];
    let nib = _mm512_set1_epi8(0x0F);
    // SAFETY (pointer offsets and reads): within the slices checked by `dots`.
    unsafe {
        for b in 0..nb {
            let blk = wp.add(b * pbb);
            // The weights stream through once per token tile: ask for the block PREFETCH ahead.
            prefetch(blk.wrapping_add(PREFETCH * pbb), pbb);
            let mut w = [_mm512_setzero_si512(); 8];
            let (dw, mw);
            if K != Q8_0 {
                // Group j's low nibbles are values 4j..4j+4, its high nibbles 16+4j..: the
                // activation groups j and j + 4.
                for j in 0..4 {
                    let v = _mm512_loadu_si512(blk.add(64 * j) as *const _);
                    w[j] = _mm512_and_si512(v, nib);
                    w[j + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
                }
                dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(256) as *const __m256i));
                mw = if K == Q4_1 { _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(288) as *const __m256i)) } else { dw };
            } else {
                for (j, wj) in w.iter_mut().enumerate() {
                    *wj = _mm512_loadu_si512(blk.add(64 * j) as *const _);
                }
                dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(512) as *const __m256i));
                mw = dw;
            }
            // The T tokens' integer sums side by side, group by group: T independent chains in
            // program order (one token's 8 dependent `vpdpbusd`s at a time stalled on latency).
            let mut sums = [_mm512_setzero_si512(); T];
            for (j, wj) in w.iter().enumerate() {
                for (i, s) in sums.iter_mut().enumerate() {
                    let xp = a.qs.as_ptr().add(((t0 + i) * nb + b) * QK) as *const i32;
                    *s = _mm512_dpbusd_epi32(*s, *wj, _mm512_set1_epi32(xp.add(j).read_unaligned()));
                }
            }
            for ((i, acc), mut s) in acc.iter_mut().enumerate().zip(sums) {
                let k = (t0 + i) * nb + b;
                if K != Q4_1 {
                    // The stored offset (Q8_0: +128) or the one not applied (Q4_0: -8).
                    let off = if K == Q8_0 { 128 } else { 8 };
                    s = _mm512_sub_epi32(s, _mm512_set1_epi32(off * *a.sums.get_unchecked(k)));
                }
                let dx = _mm512_set1_ps(*a.d.get_unchecked(k));
                let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, dx));
                if K == Q4_1 {
                    v = _mm512_add_ps(v, _mm512_mul_ps(mw, _mm512_set1_ps(*a.s.get_unchecked(k))));
                }
                *acc = _mm512_add_ps(*acc, v);
            }
        }
    }
    acc
}

#[cfg(test)]
#[path = "avx512_panel_tests.rs"]
mod tests;
