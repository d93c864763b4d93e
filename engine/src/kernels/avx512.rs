//! AVX-512 (F/BW/VL + VNNI) kernel for Q4_1 x Q8_1 dot products (semantics in `q4_1.rs`).
//! Two blocks per step on 512-bit vectors: both blocks' nibbles expand to 64 unsigned bytes,
//! the activation quants of two consecutive blocks are 64 contiguous bytes, and one `vpdpbusd`
//! gives 16 i32 partial sums (8 per block), scaled by `d_w*d_x` of their block in one FMA.
//! An odd last block runs on 256-bit vectors. Up to 4 tokens share each expanded weight pair.

use std::arch::x86_64::*;

use super::q4_1::{Q8_1Rows, BLOCK_BYTES, QK};

/// Dots of one weight row (`a.nb` Q4_1 blocks in `w`) with each of the `a.l` activation rows,
/// written to `out[0..a.l]`. Caller guarantees the features of `Isa::Avx512` are available.
pub(super) fn row_dots(w: &[u8], a: &Q8_1Rows, out: &mut [f32]) {
    let (nb, l) = (a.nb, a.l);
    // These checks make every pointer access below in bounds; they are O(1) per row.
    assert!(w.len() >= nb * BLOCK_BYTES && out.len() >= l);
    assert!(a.qs.len() >= l * nb * QK && a.d.len() >= l * nb && a.s.len() >= l * nb);
    let mut t = 0;
    while t + 4 <= l {
        // SAFETY: the caller checked the CPU features (the only precondition of a
        // `target_feature` fn); slice bounds were asserted above for tokens t..t+4 <= l.
        unsafe { tile::<4>(w, a, t, &mut out[t..t + 4]) };
        t += 4;
    }
    while t < l {
        // SAFETY: as above, for the single token t < l.
        unsafe { tile::<1>(w, a, t, &mut out[t..t + 1]) };
        t += 1;
    }
}

/// Expands one block's 16 nibble bytes at `p` to 32 bytes: low nibbles, then high nibbles.
/// Safety: `p..p+16` readable.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: unaligned 16-byte load inside the caller's block (caller's precondition).
    let q = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
        _mm256_set1_epi8(0x0F),
    )
}

/// `[d_w, m_w]` of the block at `p`. Safety: `p..p+4` readable.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn scales(p: *const u8) -> (f32, f32) {
    // SAFETY: unaligned 4-byte read inside the caller's block (caller's precondition).
    let bits = unsafe { std::ptr::read_unaligned(p as *const i32) };
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)))
}

/// N tokens `t0..t0+N` against one weight row. Safety: the `Isa::Avx512` features are
/// available, `w` holds `a.nb` blocks, `a` holds tokens up to `t0+N`, `out.len() == N`
/// (checked by `row_dots`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const N: usize>(w: &[u8], a: &Q8_1Rows, t0: usize, out: &mut [f32]) {
    let nb = a.nb;
    let mut acc = [_mm512_setzero_ps(); N];
    let mut acc_tail = [_mm256_setzero_ps(); N];
    let mut summs = [0f32; N];
    let wp = w.as_ptr();
    let qp = a.qs.as_ptr();
    // Lanes 0..8 take element 0 of a vector, lanes 8..16 element 2.
    let pick02 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    // Per token: lanes 1 and 3 sum m_w*s_x of even and odd blocks (lanes 0, 2 unused).
    let mut ms = [_mm_setzero_ps(); N];
    let mut b = 0;
    while b + 2 <= nb {
        // SAFETY: blocks b and b+1 end at (b+2)*20 <= nb*20 <= w.len(); unaligned reads.
        let (blk0, blk1) = unsafe { (wp.add(b * BLOCK_BYTES), wp.add((b + 1) * BLOCK_BYTES)) };
        let (h0, h1) = unsafe {
            (
                std::ptr::read_unaligned(blk0 as *const i32),
                std::ptr::read_unaligned(blk1 as *const i32),
            )
        };
        // [d0, m0, d1, m1] from the four f16s.
        let dm = _mm_cvtph_ps(_mm_unpacklo_epi32(
            _mm_cvtsi32_si128(h0),
            _mm_cvtsi32_si128(h1),
        ));
        let wq = unsafe {
            _mm512_inserti64x4(
                _mm512_castsi256_si512(nibbles(blk0.add(4))),
                nibbles(blk1.add(4)),
                1,
            )
        };
        for k in 0..N {
            let i = (t0 + k) * nb + b;
            // SAFETY: blocks i and i+1 belong to token t0+k (b+1 < nb), so quants
            // i*32..i*32+64 lie within a.qs, and d/s[i..i+2] within a.d/a.s (asserted by the
            // caller); all loads are unaligned loads.
            let (xq, dx, sx) = unsafe {
                (
                    _mm512_loadu_si512(qp.add(i * QK) as *const _),
                    _mm_castpd_ps(_mm_load_sd(a.d.as_ptr().add(i) as *const f64)),
                    _mm_castpd_ps(_mm_load_sd(a.s.as_ptr().add(i) as *const f64)),
                )
            };
            // [d0*dx0, m0*sx0, d1*dx1, m1*sx1]
            let prod = _mm_mul_ps(dm, _mm_unpacklo_ps(dx, sx));
            let scale = _mm512_permutexvar_ps(pick02, _mm512_castps128_ps512(prod));
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, xq);
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[k]);
            ms[k] = _mm_add_ps(ms[k], prod);
        }
        b += 2;
    }
    for k in 0..N {
        let mut lanes = [0f32; 4];
        // SAFETY: 4 floats stored into a 4-float array (unaligned store).
        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), ms[k]) };
        summs[k] = lanes[1] + lanes[3];
    }
    if b < nb {
        // SAFETY: block b ends at (b+1)*20 <= w.len().
        let blk = unsafe { wp.add(b * BLOCK_BYTES) };
        let (dw, mw) = unsafe { scales(blk) };
        let wq = unsafe { nibbles(blk.add(4)) };
        for k in 0..N {
            let i = (t0 + k) * nb + b;
            // SAFETY: i < l*nb: quants i*32..i*32+32 and d/s[i] are in bounds.
            let xq = unsafe { _mm256_loadu_si256(qp.add(i * QK) as *const __m256i) };
            let (dx, sx) = unsafe { (*a.d.get_unchecked(i), *a.s.get_unchecked(i)) };
            let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq, xq);
            acc_tail[k] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * dx), acc_tail[k]);
            summs[k] += mw * sx;
        }
    }
    for k in 0..N {
        out[k] = _mm512_reduce_add_ps(acc[k]) + hsum256(acc_tail[k]) + summs[k];
    }
}

/// Horizontal sum of 8 floats.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
