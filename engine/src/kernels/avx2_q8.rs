//! AVX2 + FMA + F16C kernels for Q8_0 and Q4_0 weights x Q8_0 activations (semantics in
//! `q8_0.rs` and `q4_0.rs`). Per block a weight row's 32 values become 32 signed bytes (Q8_0:
//! loaded as they are; Q4_0: nibbles expanded, low then high, minus 8). The signed x signed
//! product uses the sign trick: `maddubs(|w|, sign(x, w))` multiplies u8 x i8 pairs into 16
//! i16 sums (at most 2*128*127, no saturation; |w| may be 128 for a -128 weight, the
//! activations never reach -128), `madd` with ones widens to 8 i32, and one FMA scales them by
//! `d_w*d_x` into a float accumulator, horizontally summed after the last block.
//!
//! A call covers one weight row and up to 4 tokens, so each loaded (and for Q4_0 expanded)
//! weight block serves 4 tokens; a row's blocks are read from memory once per matmul, later
//! tokens find them in L1. (Tiles of 4 rows x 1-2 tokens were 2x slower on the 49152 x 576
//! Q8_0 output matrix at one token: reading 4 rows in an interleaved order streams from DRAM
//! worse than one row after another.) Every (row, token) pair runs exactly the same operations
//! in the same order whatever its tile, so a result never depends on the batch (see the
//! invariant in `matrix.rs`).

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
    for r in 0..rows {
        let mut t = 0;
        // SAFETY (both `tile` calls): the caller checked the CPU features (the only
        // precondition of a `target_feature` fn); row r < rows and tokens t..t+N <= l are
        // within the slices, as asserted above.
        while t + 4 <= l {
            unsafe { tile::<4, Q4>(w, a, r, t, yt) };
            t += 4;
        }
        while t < l {
            unsafe { tile::<1, Q4>(w, a, r, t, yt) };
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

/// Row `r` of `w` against tokens `t0..t0+N` of `a`, into `yt[r * l + token]`.
/// Safety: AVX2/FMA/F16C available; that row and those tokens exist (`w` holds `(r+1) * nb`
/// blocks, `a` holds `t0+N` rows of `nb` blocks; checked by `dots`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const N: usize, const Q4: bool>(
    w: &[u8],
    a: &Q8_0Rows,
    r: usize,
    t0: usize,
    yt: &mut [f32],
) {
    let (nb, l) = (a.nb, a.l);
    let bb = block_bytes(Q4);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    // SAFETY: row r starts at r*nb*bb < w.len() (in bounds, or one past the end when nb = 0).
    let wp = unsafe { w.as_ptr().add(r * nb * bb) };
    let qp = a.qs.as_ptr();
    for b in 0..nb {
        // SAFETY: block b of row r ends at (r*nb + b + 1)*bb <= w.len().
        let (dw, wq, wa) = unsafe { load_block::<Q4>(wp.add(b * bb)) };
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let j = (t0 + k) * nb + b;
            // SAFETY: j < l*nb, so quants j*32..j*32+32 lie within a.qs and d[j] within a.d
            // (asserted by `dots`); unaligned load.
            let (xq, dx) = unsafe {
                (
                    _mm256_loadu_si256(qp.add(j * QK) as *const __m256i),
                    *a.d.get_unchecked(j),
                )
            };
            let prod = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xq, wq));
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            *acc_k = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * dx), *acc_k);
        }
    }
    for (k, v) in acc.iter().enumerate() {
        yt[r * l + t0 + k] = hsum(*v);
    }
}
