//! AVX-512 VNNI kernels for the K-quants, Q4_K and Q6_K x Q8_K, over the panel layout
//! (`panel.rs`), on the driver of `avx512_panel.rs`: one 512-bit vector holds 16 weight rows'
//! values of a group of 4, a token's 4 activation quants are broadcast to all lanes, and a
//! block's weights, unpacked once, serve up to 8 tokens.
//!
//! Per block of 256 values and token, each sub-block's (Q4_K: 32 values, Q6_K: 16) integer dot
//! comes from `vpdpbusd` (the weights are unsigned: Q4_K's nibbles, Q6_K's 6-bit values before
//! their `- 32`), is multiplied by the rows' sub-block scales (`vpmulld`) and summed; the
//! minimums (Q4_K) and the `- 32` offsets (Q6_K) multiply the activations' run sums
//! (`Q8KRows::sums_i16`) with `vpdpwssd`. All of it exact in i32, as in the scalar references
//! (`q4_k::dots_scalar`, `q6_k::dots_scalar`), and the float step is theirs operation for
//! operation (`q4_k::block_value`, `q6_k::block_value`, then added to the row's sum block by
//! block), so the results equal scalar bit for bit whatever the batch; the tests compare bits.

use std::arch::x86_64::*;

use super::avx512_panel::{available, panels, prefetch, Tiles};
use super::panel::{Q4_K_SPEC, Q6_K_SPEC, ROWS};
use super::q8_k::{Q8KRows, QK_K};

/// Weight formats (const generic `K`).
const Q4K: u8 = 0;
const Q6K: u8 = 1;

const fn panel_block_bytes(k: u8) -> usize {
    if k == Q4K {
        Q4_K_SPEC.panel_block_bytes()
    } else {
        Q6_K_SPEC.panel_block_bytes()
    }
}

// The offsets the tiles use: Q4_K's sc, m, d (dmin 32 bytes after d); Q6_K's qh, scales, d.
const _: () = assert!(
    Q4_K_SPEC.seg_base(1) == 2048 && Q4_K_SPEC.seg_base(2) == 2176 && Q4_K_SPEC.seg_base(3) == 2304
        && Q4_K_SPEC.panel_block_bytes() == 2368
);
const _: () = assert!(
    Q6_K_SPEC.seg_base(1) == 2048 && Q6_K_SPEC.seg_base(2) == 3072 && Q6_K_SPEC.seg_base(3) == 3328
        && Q6_K_SPEC.panel_block_bytes() == 3360
);

/// Panel blocks ahead that a tile prefetches (one is 2,368 bytes for Q4_K, 3,360 for Q6_K).
const PREFETCH: usize = 2;

/// What the tiles read.
struct Acts<'a, const K: u8> {
    nb: usize,
    qs: &'a [i8],
    d: &'a [f32],
    /// The 16 run sums of every block, i16.
    sums: &'a [i16],
}

/// `y[t][i]` = dot of Q4_K weight row `i` (of the panels `w`) with token `t`, for the
/// `y[t].len()` rows the panels hold: `y` has one slice per token, all of the same length.
/// Panics unless [`available`].
pub(super) fn dots_q4_k(w: &[u8], a: &Q8KRows, y: &mut [&mut [f32]]) {
    dots::<Q4K>(w, a, y)
}

/// As [`dots_q4_k`] for Q6_K weights.
pub(super) fn dots_q6_k(w: &[u8], a: &Q8KRows, y: &mut [&mut [f32]]) {
    dots::<Q6K>(w, a, y)
}

fn dots<const K: u8>(w: &[u8], a: &Q8KRows, y: &mut [&mut [f32]]) {
    let (l, nb) = (a.l, a.nb);
    let rows = y.first().map_or(0, |y| y.len());
    if l == 0 || rows == 0 {
        return;
    }
    assert!(available(), "AVX-512 VNNI panel kernel on a CPU without it");
    let acts = Acts::<K> { nb, qs: &a.qs, d: &a.d, sums: a.sums_i16() };
    // These checks make every pointer access of the tiles in bounds.
    assert!(y.len() == l && y.iter().all(|y| y.len() == rows));
    assert!(w.len() >= rows.div_ceil(ROWS) * nb * panel_block_bytes(K));
    assert!(acts.qs.len() >= l * nb * QK_K && acts.d.len() >= l * nb && acts.sums.len() >= l * nb * 16);
    // SAFETY: the features were checked just above; the bounds by the asserts.
    unsafe { panels(w, nb * panel_block_bytes(K), &acts, y) }
}

impl<const K: u8> Tiles for Acts<'_, K> {
    #[inline(always)]
    unsafe fn tile<const T: usize>(&self, wp: *const u8, t0: usize) -> [__m512; T] {
        let (nb, pbb) = (self.nb, panel_block_bytes(K));
        let mut acc = [_mm512_setzero_ps(); T];
        // SAFETY (pointer offsets and reads): within the slices checked by `dots`.
        unsafe {
            for b in 0..nb {
                let blk = wp.add(b * pbb);
                prefetch(blk.wrapping_add(PREFETCH * pbb), pbb);
                let ks: [usize; T] = std::array::from_fn(|i| (t0 + i) * nb + b);
                if K == Q4K {
                    let (sumi, summ) = self.q4_k_block::<T>(blk, &ks);
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(2304) as *const __m256i));
                    let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(2336) as *const __m256i));
                    for i in 0..T {
                        let dx = _mm512_set1_ps(*self.d.get_unchecked(ks[i]));
                        let v = _mm512_sub_ps(
                            _mm512_mul_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(sumi[i])),
                            _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(summ[i])),
                        );
                        acc[i] = _mm512_add_ps(acc[i], v);
                    }
                } else {
                    let sumi = self.q6_k_block::<T>(blk, &ks);
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(3328) as *const __m256i));
                    for i in 0..T {
                        let dx = _mm512_set1_ps(*self.d.get_unchecked(ks[i]));
                        acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(sumi[i])));
                    }
                }
            }
        }
        acc
    }
}

impl<const K: u8> Acts<'_, K> {
    /// Token block `k`'s 4 activation quants from value `v` as one i32, broadcast.
    /// Safety: `k` and `v` within the checked activations.
    #[inline(always)]
    unsafe fn x4(&self, k: usize, v: usize) -> __m512i {
        // SAFETY: as the function's.
        unsafe { _mm512_set1_epi32((self.qs.as_ptr().add(k * QK_K + v) as *const i32).read_unaligned()) }
    }

    /// Token block `k`'s run sums `2p` and `2p + 1` as one i32 of two i16, broadcast.
    /// Safety: `k` within the checked activations, `p < 8`.
    #[inline(always)]
    unsafe fn sums2(&self, k: usize, p: usize) -> __m512i {
        // SAFETY: as the function's.
        unsafe { _mm512_set1_epi32((self.sums.as_ptr().add(k * 16 + 2 * p) as *const i32).read_unaligned()) }
    }

    /// One Q4_K panel block (`blk`) against the token blocks `ks`: per token,
    /// `sum_j sc[j] * dot_j` and `sum_j m[j] * sum_j(x)` (the two sums of `q4_k::dots_scalar`).
    /// Safety: as [`Tiles::tile`].
    #[inline(always)]
    unsafe fn q4_k_block<const T: usize>(&self, blk: *const u8, ks: &[usize; T]) -> ([__m512i; T], [__m512i; T]) {
        let nib = _mm512_set1_epi8(0x0F);
        let mut sumi = [_mm512_setzero_si512(); T];
        let mut summ = [_mm512_setzero_si512(); T];
        // SAFETY: offsets within the panel block (2,368 bytes) and the activations' blocks.
        unsafe {
            for j in 0..8 {
                // Sub-block j: the low (j even) or high nibbles of groups 8 * (j / 2) + k.
                let mut isum = [_mm512_setzero_si512(); T];
                for k in 0..8 {
                    let v = _mm512_loadu_si512(blk.add(64 * (8 * (j / 2) + k)) as *const _);
                    let w = if j % 2 == 0 { v } else { _mm512_srli_epi16::<4>(v) };
                    let w = _mm512_and_si512(w, nib);
                    for i in 0..T {
                        isum[i] = _mm512_dpbusd_epi32(isum[i], w, self.x4(ks[i], 32 * j + 4 * k));
                    }
                }
                let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(2048 + 16 * j) as *const __m128i));
                for i in 0..T {
                    sumi[i] = _mm512_add_epi32(sumi[i], _mm512_mullo_epi32(isum[i], sc));
                }
            }
            // After the quants, so that these T sums are not live beside the 2T above (spills).
            for j in 0..8 {
                // m[j] in both halves of each lane, against runs 2j and 2j + 1.
                let m = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(2176 + 16 * j) as *const __m128i));
                let mm = _mm512_or_si512(m, _mm512_slli_epi32::<16>(m));
                for i in 0..T {
                    summ[i] = _mm512_dpwssd_epi32(summ[i], mm, self.sums2(ks[i], j));
                }
            }
        }
        (sumi, summ)
    }

    /// One Q6_K panel block (`blk`) against the token blocks `ks`: per token,
    /// `sum_j sc[j] * (dot_j - 32 * sum_j(x))` (`q6_k::dots_scalar`'s `sumi`).
    /// Safety: as [`Tiles::tile`].
    #[inline(always)]
    unsafe fn q6_k_block<const T: usize>(&self, blk: *const u8, ks: &[usize; T]) -> [__m512i; T] {
        let mut sumi = [_mm512_setzero_si512(); T];
        let mut off = [_mm512_setzero_si512(); T];
        // SAFETY: offsets within the panel block (3,360 bytes) and the activations' blocks.
        unsafe {
            // Run j = 8n + 2q + kk: half n, quarter q (values 128n + 32q ..), k in 4kk..4kk + 4;
            // its scale is the (kk) half of the rows' scale pair p = 4n + q.
            let scale = |p: usize, kk: usize| {
                let sc2 = self.q6_k_scales(blk, p);
                if kk == 0 {
                    _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(sc2))
                } else {
                    _mm512_srai_epi32::<16>(sc2)
                }
            };
            if T <= 2 {
                // Few tokens: the 4 quarters side by side, each (ql, qh) load decoded 4 ways.
                for n in 0..2 {
                    for kk in 0..2 {
                        let mut isum = [[_mm512_setzero_si512(); T]; 4];
                        for k in 4 * kk..4 * kk + 4 {
                            for (q, isum) in isum.iter_mut().enumerate() {
                                let u = q6_k_values(blk, n, q, k);
                                for i in 0..T {
                                    isum[i] = _mm512_dpbusd_epi32(isum[i], u, self.x4(ks[i], 128 * n + 32 * q + 4 * k));
                                }
                            }
                        }
                        for (q, isum) in isum.iter().enumerate() {
                            let sc = scale(4 * n + q, kk);
                            for i in 0..T {
                                sumi[i] = _mm512_add_epi32(sumi[i], _mm512_mullo_epi32(isum[i], sc));
                            }
                        }
                    }
                }
            } else {
                // A run at a time (T chains per run; 4T would not fit the registers).
                for p in 0..8 {
                    let (n, q) = (p / 4, p % 4);
                    for kk in 0..2 {
                        let mut isum = [_mm512_setzero_si512(); T];
                        for k in 4 * kk..4 * kk + 4 {
                            let u = q6_k_values(blk, n, q, k);
                            for i in 0..T {
                                isum[i] = _mm512_dpbusd_epi32(isum[i], u, self.x4(ks[i], 128 * n + 32 * q + 4 * k));
                            }
                        }
                        let sc = scale(p, kk);
                        for i in 0..T {
                            sumi[i] = _mm512_add_epi32(sumi[i], _mm512_mullo_epi32(isum[i], sc));
                        }
                    }
                }
            }
            // After the quants, so that these T sums are not live beside the 2T above (spills).
            for p in 0..8 {
                let sc2 = self.q6_k_scales(blk, p);
                for i in 0..T {
                    off[i] = _mm512_dpwssd_epi32(off[i], sc2, self.sums2(ks[i], p));
                }
            }
        }
        for i in 0..T {
            sumi[i] = _mm512_sub_epi32(sumi[i], _mm512_slli_epi32::<5>(off[i]));
        }
        sumi
    }

    /// Q6_K scales `2p` and `2p + 1` of the panel block's 16 rows, sign-extended to the two i16
    /// of each lane. Safety: `blk` a Q6_K panel block, `p < 8`.
    #[inline(always)]
    unsafe fn q6_k_scales(&self, blk: *const u8, p: usize) -> __m512i {
        // SAFETY: 32 bytes within the block's scales.
        unsafe { _mm512_cvtepi8_epi16(_mm256_loadu_si256(blk.add(3072 + 32 * p) as *const __m256i)) }
    }
}

/// The 16 rows' unsigned 6-bit Q6_K values `128n + 32q + 4k .. + 4` of a panel block: the low
/// (quarters 0, 1) or high (2, 3) nibbles of `ql` bytes `64n + 4k` (quarters 0, 2) or
/// `64n + 32 + 4k` (1, 3), and the quarter's 2 bits of `qh` bytes `32n + 4k`.
/// Safety: `blk` a Q6_K panel block, `n < 2`, `q < 4`, `k < 8`.
#[inline(always)]
unsafe fn q6_k_values(blk: *const u8, n: usize, q: usize, k: usize) -> __m512i {
    // SAFETY: within the block's ql (2,048 bytes) and qh (1,024 bytes after them).
    let (x, h) = unsafe {
        (
            _mm512_loadu_si512(blk.add(64 * (16 * n + 8 * (q % 2) + k)) as *const _),
            _mm512_loadu_si512(blk.add(2048 + 64 * (8 * n + k)) as *const _),
        )
    };
    let low = if q < 2 { x } else { _mm512_srli_epi16::<4>(x) };
    // The quarter's 2 high bits moved to bits 4..6.
    let high = match q {
        0 => _mm512_slli_epi16::<4>(h),
        1 => _mm512_slli_epi16::<2>(h),
        2 => h,
        _ => _mm512_srli_epi16::<2>(h),
    };
    // (high & 0x30) | (low & 0x0F)
    _mm512_ternarylogic_epi32::<0xEA>(high, _mm512_set1_epi8(0x30), _mm512_and_si512(low, _mm512_set1_epi8(0x0F)))
}

#[cfg(test)]
#[path = "avx512_panel_k_tests.rs"]
mod tests;
