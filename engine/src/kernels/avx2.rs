//! AVX2 + FMA + F16C kernel for Q4_1 x Q8_1 dot products (see `q4_1.rs` for the semantics).
//! Per block: the 16 nibble bytes expand to 32 unsigned bytes (low nibbles then high, matching
//! the activation order), `maddubs` multiplies them with the 32 signed activation quants into
//! 16 i16 sums (at most 2*15*127, no saturation), `madd` with ones widens to 8 i32, and one FMA
//! scales them by `d_w*d_x` into a float accumulator; `m_w*s_x` is summed on the side.
//! Up to 4 tokens share each expanded weight block.

use std::arch::x86_64::*;

use super::q4_1::{Q8_1Rows, BLOCK_BYTES, QK};

/// Dots of one weight row (`a.nb` Q4_1 blocks in `w`) with each of the `a.l` activation rows,
/// written to `out[0..a.l]`. Caller guarantees AVX2, FMA and F16C are available
/// (`Isa::Avx2.available()`).
pub(super) fn row_dots(w: &[u8], a: &Q8_1Rows, out: &mut [f32]) {
    let (nb, l) = (a.nb, a.l);
    // These checks make every pointer access below in bounds; they are O(1) per row.
    assert!(w.len() >= nb * BLOCK_BYTES && out.len() >= l);
    assert!(a.qs.len() >= l * nb * QK && a.d.len() >= l * nb && a.s.len() >= l * nb);
    let mut t = 0;
    while t + 4 <= l {
        // SAFETY: the caller checked the CPU features (the only precondition of a
        // `target_feature` fn); slice bounds were asserted above for tokens t..t+4 < l.
        unsafe { tile::<4>(w, a, t, &mut out[t..t + 4]) };
        t += 4;
    }
    while t < l {
        // SAFETY: as above, for the single token t < l.
        unsafe { tile::<1>(w, a, t, &mut out[t..t + 1]) };
        t += 1;
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

/// Expands one block's 16 nibble bytes at `p` to 32 bytes: low nibbles, then high nibbles.
/// Safety: AVX2 available and `p..p+16` readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: unaligned 16-byte load inside the caller's block (caller's precondition).
    let q = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
        _mm256_set1_epi8(0x0F),
    )
}

/// Sum of `q_w*q_x` over one block as 8 i32 lanes: `maddubs` (u8 x i8 pairs into i16, at most
/// 2*15*127 so never saturating) then `madd` with ones into i32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn block_dot(wq: __m256i, xq: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), _mm256_set1_epi16(1))
}

/// N tokens `t0..t0+N` against one weight row, one block per step. (A two-block variant with
/// the scales of both blocks in one 4-lane op was ~20% faster at 4 tokens but ~15% slower at
/// one, the decode case; one code path for every N also keeps a token's result independent of
/// how many tokens share the call.) Safety: AVX2/FMA/F16C available, `w` holds `a.nb` blocks,
/// `a` holds tokens up to `t0+N`, `out.len() == N` (checked by `row_dots`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const N: usize>(w: &[u8], a: &Q8_1Rows, t0: usize, out: &mut [f32]) {
    let nb = a.nb;
    let mut acc = [_mm256_setzero_ps(); N];
    let mut summs = [0f32; N];
    let wp = w.as_ptr();
    let qp = a.qs.as_ptr();
    for b in 0..nb {
        // SAFETY: block b ends at (b+1)*20 <= nb*20 <= w.len(); unaligned reads, so the
        // 2-byte alignment of GGUF blocks does not matter.
        let blk = unsafe { wp.add(b * BLOCK_BYTES) };
        let (h, wq) = unsafe {
            (
                std::ptr::read_unaligned(blk as *const i32),
                nibbles(blk.add(4)),
            )
        };
        // [d_w, m_w, 0, 0]
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
        let (dw, mw) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        for k in 0..N {
            let i = (t0 + k) * nb + b;
            // SAFETY: i < l*nb, so quants i*32..i*32+32 lie within a.qs and d/s[i] within
            // a.d/a.s (asserted by `row_dots`); unaligned load.
            let xq = unsafe { _mm256_loadu_si256(qp.add(i * QK) as *const __m256i) };
            let (dx, sx) = unsafe { (*a.d.get_unchecked(i), *a.s.get_unchecked(i)) };
            let p = _mm256_cvtepi32_ps(block_dot(wq, xq));
            acc[k] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * dx), acc[k]);
            summs[k] += mw * sx;
        }
    }
    for k in 0..N {
        out[k] = hsum(acc[k]) + summs[k];
    }
}
