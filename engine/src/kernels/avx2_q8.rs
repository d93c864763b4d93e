//! The previous AVX2 kernels (`AI_SANDBOX_KERNEL=avx2-v1` and tests only; the default is
//! `avx2_lanes.rs`) for Q8_0 and Q4_0 weights x Q8_0 activations (semantics in
//! `q8_0.rs` and `q4_0.rs`). Per block a weight row's 32 values become 32 signed bytes (Q8_0:
//! loaded as they are; Q4_0: nibbles expanded, low then high, minus 8). The signed x signed
//! product uses the sign trick: `maddubs(|w|, sign(x, w))` multiplies u8 x i8 pairs into 16
//! i16 sums (at most 2*128*127, no saturation; |w| may be 128 for a -128 weight, the
//! activations never reach -128), `madd` with ones widens to 8 i32, and one FMA scales them by
//! `d_w*d_x` into a float accumulator, horizontally summed after the last block.
//!
//! A tile covers one weight row and up to 4 tokens, so each loaded (and for Q4_0 expanded)
//! weight block serves 4 tokens; a row's blocks are read from memory once per matmul, later
//! tokens find them in L1. From 4 tokens on, tiles take 2 rows x 4 tokens so each activation
//! block load also serves 2 rows. (Tiles of 4 rows x 1-2 tokens were 2x slower on the
//! 49152 x 576 Q8_0 output matrix at one token: reading 4 rows in an interleaved order streams
//! from DRAM worse than one row after another; one token keeps the single-row tile.) Every
//! (row, token) pair runs exactly the same operations in the same order whatever its tile (the
//! generic `tile`, or `pair_tile` whose every vector lane is the same IEEE operation on the
//! same operands; the tests compare bits), so a result never depends on the batch (see the
//! invariant in `matrix.rs`). The pair tile prefetches the next pair's blocks: two interleaved
//! row streams otherwise made one 4-token group 1.7x slower on the 49152 x 576 matrix.

use std::arch::x86_64::*;

use super::matrix::QK;
use super::q8_0::Q8_0Rows;
use super::{q4_0, q8_0};

/// `yt[i*l + t]` = dot of Q8_0 weight row `i` of `w` with token `t` of `a`. Caller guarantees
/// AVX2, FMA and F16C are available (`Isa::Avx2.available()`).
pub(super) fn dots_q8_0(w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
    dots::<false>(w, a, yt)
}

/// As [`dots_q8_0`] for Q4_0 weight rows.
pub(super) fn dots_q4_0(w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
    dots::<true>(w, a, yt)
}

/// Bytes of one weight block.
const fn block_bytes(q4: bool) -> usize {
    if q4 {
        q4_0::BLOCK_BYTES
    } else {
        q8_0::BLOCK_BYTES
    }
}

fn dots<const Q4: bool>(w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
    let (nb, l) = (a.nb, a.l);
    if l == 0 {
        return;
    }
    let rows = yt.len() / l;
    let row_bytes = nb * block_bytes(Q4);
    // These checks make every pointer access below in bounds; they are O(1) per call.
    assert!(yt.len() == rows * l && w.len() >= rows * row_bytes);
    assert!(a.qs.len() >= l * nb * QK && a.d.len() >= l * nb);
    // SAFETY (every `tile` call below): the caller checked the CPU features (the only
    // precondition of a `target_feature` fn); rows r..r+R <= rows and tokens t..t+N <= l are
    // within the slices, as asserted above.
    let mut r = 0;
    if l >= 4 {
        // Pairs of rows: each activation block load serves both. The `d` terms of each
        // 4-token group, `[group][block][token]`, each repeated 8 times so `pair_tile`
        // multiplies by a plain vector load (the compiler turns a broadcast load into a scalar
        // multiply and a register broadcast: one more instruction).
        let mut d8 = vec![[0f32; 8]; (l / 4) * nb * 4];
        for (g, dg) in d8.chunks_exact_mut(nb * 4).enumerate() {
            for (b, db) in dg.chunks_exact_mut(4).enumerate() {
                for (k, dv) in db.iter_mut().enumerate() {
                    *dv = [a.d[(4 * g + k) * nb + b]; 8];
                }
            }
        }
        while r + 2 <= rows {
            let mut t = 0;
            while t + 4 <= l {
                unsafe { pair_tile::<Q4>(w, a, r, t, &d8[(t / 4) * nb * 4..], yt) };
                t += 4;
            }
            while t < l {
                unsafe { tile::<2, 1, Q4>(w, a, r, t, yt) };
                t += 1;
            }
            r += 2;
        }
    }
    for r in r..rows {
        let mut t = 0;
        while t + 4 <= l {
            unsafe { tile::<1, 4, Q4>(w, a, r, t, yt) };
            t += 4;
        }
        while t < l {
            unsafe { tile::<1, 1, Q4>(w, a, r, t, yt) };
            t += 1;
        }
    }
}

/// Horizontal sum of 8 floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// One weight block at `p` as (`d_w`, 32 signed values, their absolute values).
/// Safety: AVX2/F16C available and the block's bytes `p..p+block_bytes(Q4)` readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_block<const Q4: bool>(p: *const u8) -> (f32, __m256i, __m256i) {
    // SAFETY: unaligned reads inside the block (caller's precondition); GGUF blocks are only
    // 2-byte aligned.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
    let q = if Q4 {
        let n = unsafe { _mm_loadu_si128(p.add(2) as *const __m128i) };
        let nib = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(n, 4), n),
            _mm256_set1_epi8(0x0F),
        );
        _mm256_sub_epi8(nib, _mm256_set1_epi8(8))
    } else {
        unsafe { _mm256_loadu_si256(p.add(2) as *const __m256i) }
    };
    (d, q, _mm256_abs_epi8(q))
}

/// Rows `r0..r0+R` of `w` against tokens `t0..t0+N` of `a`, into `yt[row * l + token]`. Each
/// (row, token) pair has its own accumulator and the same operations in block order whatever
/// `R` and `N`. Safety: AVX2/FMA/F16C available; those rows and tokens exist (`w` holds
/// `(r0+R) * nb` blocks, `a` holds `t0+N` rows of `nb` blocks; checked by `dots`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const N: usize, const Q4: bool>(
    w: &[u8],
    a: &Q8_0Rows,
    r0: usize,
    t0: usize,
    yt: &mut [f32],
) {
    let (nb, l) = (a.nb, a.l);
    let bb = block_bytes(Q4);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    // SAFETY: row r0+i starts at (r0+i)*nb*bb <= w.len() (in bounds, or one past the end when
    // nb = 0).
    let wp: [*const u8; R] = std::array::from_fn(|i| unsafe { w.as_ptr().add((r0 + i) * nb * bb) });
    let qp = a.qs.as_ptr();
    for b in 0..nb {
        // SAFETY: block b of row r0+i ends at ((r0+i)*nb + b + 1)*bb <= w.len().
        // (A loop, not a closure: closures do not inherit the target features, so
        // `load_block` would not inline.)
        let mut blk = [(0f32, _mm256_setzero_si256(), _mm256_setzero_si256()); R];
        for (blk_i, p) in blk.iter_mut().zip(wp) {
            *blk_i = unsafe { load_block::<Q4>(p.add(b * bb)) };
        }
        for k in 0..N {
            let j = (t0 + k) * nb + b;
            // SAFETY: j < l*nb, so quants j*32..j*32+32 lie within a.qs and d[j] within a.d
            // (asserted by `dots`); unaligned load.
            let (xq, dx) = unsafe {
                (
                    _mm256_loadu_si256(qp.add(j * QK) as *const __m256i),
                    *a.d.get_unchecked(j),
                )
            };
            for (acc_i, &(dw, wq, wa)) in acc.iter_mut().zip(&blk) {
                let prod = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xq, wq));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
                acc_i[k] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * dx), acc_i[k]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (k, v) in acc_i.iter().enumerate() {
            yt[(r0 + i) * l + t0 + k] = hsum(*v);
        }
    }
}

/// Rows `r0, r0+1` against tokens `t0..t0+4`: the same values, bit for bit, as
/// `tile::<2, 4, Q4>` (each lane is the same IEEE operation on the same operands), with
/// `d_w*d_x` as one 8-lane multiply of `d_w` broadcast by the group's repeated `d_x` from `d8`
/// (`[block][token]`) instead of a scalar multiply and a register broadcast per pair.
/// Safety: as [`tile`], and `d8` holds `4 * a.nb` entries (checked here).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_tile<const Q4: bool>(
    w: &[u8],
    a: &Q8_0Rows,
    r0: usize,
    t0: usize,
    d8: &[[f32; 8]],
    yt: &mut [f32],
) {
    let (nb, l) = (a.nb, a.l);
    assert!(d8.len() >= 4 * nb);
    let bb = block_bytes(Q4);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    // SAFETY: rows r0, r0+1 start at most at (r0+1)*nb*bb <= w.len() (caller's precondition).
    let wp = unsafe {
        [
            w.as_ptr().add(r0 * nb * bb),
            w.as_ptr().add((r0 + 1) * nb * bb),
        ]
    };
    let (qp, dp) = (a.qs.as_ptr(), d8.as_ptr());
    for b in 0..nb {
        // Two interleaved row streams defeat the hardware prefetcher on matrices that do not
        // fit in cache (one 4-token group ran 1.7x slower on the 49152 x 576 matrix), so ask
        // for the next pair's block now. A hint only: it never faults, and `wrapping_add`
        // keeps the address computation defined past the end of `w`.
        for p in wp {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add((2 * nb + b) * bb) as *const i8);
        }
        let mut blk = [(
            _mm256_setzero_ps(),
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
        ); 2];
        for (blk_i, p) in blk.iter_mut().zip(wp) {
            // SAFETY: block b of row r0+i ends at ((r0+i)*nb + b + 1)*bb <= w.len().
            let (dw, wq, wa) = unsafe { load_block::<Q4>(p.add(b * bb)) };
            *blk_i = (_mm256_set1_ps(dw), wq, wa);
        }
        for k in 0..4 {
            let j = (t0 + k) * nb + b;
            // SAFETY: j < l*nb, so quants j*32..j*32+32 lie within a.qs (asserted by `dots`),
            // and 4*b+k < 4*nb <= d8.len(); unaligned loads.
            let (xq, dx) = unsafe {
                (
                    _mm256_loadu_si256(qp.add(j * QK) as *const __m256i),
                    _mm256_loadu_ps(dp.add(4 * b + k) as *const f32),
                )
            };
            for (acc_i, &(dw, wq, wa)) in acc.iter_mut().zip(&blk) {
                let prod = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xq, wq));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
                acc_i[k] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw, dx), acc_i[k]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (k, v) in acc_i.iter().enumerate() {
            yt[(r0 + i) * l + t0 + k] = hsum(*v);
        }
    }
}
