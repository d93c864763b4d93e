//! The previous AVX2 + FMA + F16C kernel for Q4_1 x Q8_1 dot products (`q4_1.rs` has the
//! semantics), run only with `AI_SANDBOX_KERNEL=avx2-v1` (A/B runs) and by its tests: the
//! default is `avx2_lanes.rs`.
//! Per block: the 16 nibble bytes expand to 32 unsigned bytes (low nibbles then high, matching
//! the activation order), `maddubs` multiplies them with the 32 signed activation quants into
//! 16 i16 sums (at most 2*15*127, no saturation), `madd` with ones widens to 8 i32, and one FMA
//! scales them by `d_w*d_x` into a float accumulator; `m_w*s_x` is summed on the side.
//! Up to 4 tokens share each expanded weight block; from 4 tokens on, [`dots`] runs tiles of
//! 2 rows x 4 tokens so each activation block load (and its scales) also serves 2 rows. Every
//! (row, token) pair runs the same operations in block order whatever its tile (the generic
//! `tile`, or `pair_tile` whose every vector lane is the same IEEE operation on the same
//! operands; the tests compare bits), so a result never depends on the batch (see the
//! invariant in `matrix.rs`).

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
        let y = unsafe { tile::<1, 4>([w.as_ptr()], a, t) };
        out[t..t + 4].copy_from_slice(&y[0]);
        t += 4;
    }
    while t < l {
        // SAFETY: as above, for the single token t < l.
        out[t] = unsafe { tile::<1, 1>([w.as_ptr()], a, t) }[0][0];
        t += 1;
    }
}

/// `yt[i*l + t]` = dot of weight row `i` (`yt.len() / l` consecutive rows of `a.nb` Q4_1 blocks
/// in `w`) with activation row `t`; rows are paired when there are 4 tokens or more. Caller
/// guarantees AVX2, FMA and F16C are available (`Isa::Avx2.available()`).
pub(super) fn dots(w: &[u8], a: &Q8_1Rows, yt: &mut [f32]) {
    let (nb, l) = (a.nb, a.l);
    if l == 0 {
        return;
    }
    let rows = yt.len() / l;
    let row_bytes = nb * BLOCK_BYTES;
    // These checks make every pointer access below in bounds; they are O(1) per call.
    assert!(yt.len() == rows * l && w.len() >= rows * row_bytes);
    assert!(a.qs.len() >= l * nb * QK && a.d.len() >= l * nb && a.s.len() >= l * nb);
    let mut r = 0;
    if l >= 4 {
        // The `s` terms of each 4-token group, token-minor (`[group][block][token]`), so a
        // pair tile loads a block's 4 of them at once; and their `d` terms, each repeated 8
        // times, so it multiplies by a plain vector load (one instruction; the compiler turns
        // a broadcast load into a scalar multiply and a register broadcast).
        let mut s4 = vec![0f32; (l / 4) * nb * 4];
        let mut d8 = vec![[0f32; 8]; (l / 4) * nb * 4];
        for (g, (sg, dg)) in s4
            .chunks_exact_mut(nb * 4)
            .zip(d8.chunks_exact_mut(nb * 4))
            .enumerate()
        {
            for (b, (sb, db)) in sg
                .chunks_exact_mut(4)
                .zip(dg.chunks_exact_mut(4))
                .enumerate()
            {
                for (k, (sv, dv)) in sb.iter_mut().zip(db).enumerate() {
                    *sv = a.s[(4 * g + k) * nb + b];
                    *dv = [a.d[(4 * g + k) * nb + b]; 8];
                }
            }
        }
        while r + 2 <= rows {
            // Rows r and r+1 lie within `w` (asserted above).
            let wp = [
                w[r * row_bytes..].as_ptr(),
                w[(r + 1) * row_bytes..].as_ptr(),
            ];
            let mut t = 0;
            while t + 4 <= l {
                // SAFETY: CPU features checked by the caller; rows r, r+1 < rows and tokens
                // t..t+4 <= l are within the slices, as asserted above.
                let y = unsafe {
                    pair_tile(wp, a, t, &s4[(t / 4) * nb * 4..], &d8[(t / 4) * nb * 4..])
                };
                yt[r * l + t..r * l + t + 4].copy_from_slice(&y[0]);
                yt[(r + 1) * l + t..(r + 1) * l + t + 4].copy_from_slice(&y[1]);
                t += 4;
            }
            while t < l {
                // SAFETY: as above, for the single token t < l.
                let y = unsafe { tile::<2, 1>(wp, a, t) };
                yt[r * l + t] = y[0][0];
                yt[(r + 1) * l + t] = y[1][0];
                t += 1;
            }
            r += 2;
        }
    }
    for r in r..rows {
        row_dots(
            &w[r * row_bytes..(r + 1) * row_bytes],
            a,
            &mut yt[r * l..(r + 1) * l],
        );
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

/// R weight rows (block pointers `wp`) against N tokens `t0..t0+N`, one block per step:
/// `[row][token]` dots. Each (row, token) pair has its own accumulator and the same operations
/// in block order whatever `R` and `N`. (A two-block variant with the scales of both blocks in
/// one 4-lane op was ~20% faster at 4 tokens but ~15% slower at one, the decode case; one code
/// path for every tile also keeps a result independent of how many tokens and rows share the
/// call.) Safety: AVX2/FMA/F16C available, each `wp[i]` points at `a.nb` readable blocks, `a`
/// holds tokens up to `t0+N` (checked by `row_dots` / `dots`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const N: usize>(
    wp: [*const u8; R],
    a: &Q8_1Rows,
    t0: usize,
) -> [[f32; N]; R] {
    let nb = a.nb;
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let mut summs = [[0f32; N]; R];
    let qp = a.qs.as_ptr();
    for b in 0..nb {
        // (d_w, m_w, expanded quants) of block b of each row. A loop, not a closure: closures
        // do not inherit the target features, so the intrinsics would not inline.
        let mut blk = [(0f32, 0f32, _mm256_setzero_si256()); R];
        for (blk_i, p) in blk.iter_mut().zip(wp) {
            // SAFETY: block b ends at (b+1)*20 <= nb*20 bytes past `p` (caller's
            // precondition); unaligned reads, so the 2-byte alignment of GGUF blocks does not
            // matter.
            let (h, wq) = unsafe {
                let p = p.add(b * BLOCK_BYTES);
                (std::ptr::read_unaligned(p as *const i32), nibbles(p.add(4)))
            };
            // [d_w, m_w, 0, 0]
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
            *blk_i = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)), wq);
        }
        for k in 0..N {
            let i = (t0 + k) * nb + b;
            // SAFETY: i < l*nb, so quants i*32..i*32+32 lie within a.qs and d/s[i] within
            // a.d/a.s (asserted by the callers); unaligned load.
            let xq = unsafe { _mm256_loadu_si256(qp.add(i * QK) as *const __m256i) };
            let (dx, sx) = unsafe { (*a.d.get_unchecked(i), *a.s.get_unchecked(i)) };
            for ((acc_i, summs_i), &(dw, mw, wq)) in acc.iter_mut().zip(&mut summs).zip(&blk) {
                let p = _mm256_cvtepi32_ps(block_dot(wq, xq));
                acc_i[k] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * dx), acc_i[k]);
                summs_i[k] += mw * sx;
            }
        }
    }
    let mut out = [[0f32; N]; R];
    for ((o, acc_i), summs_i) in out.iter_mut().zip(&acc).zip(&summs) {
        for k in 0..N {
            o[k] = hsum(acc_i[k]) + summs_i[k];
        }
    }
    out
}

/// Two weight rows against the 4 tokens `t0..t0+4`: the same values, bit for bit, as
/// `tile::<2, 4>` (each lane below is the same IEEE operation on the same operands as there),
/// with fewer instructions: `d_w*d_x` is one 8-lane multiply by a vector load of `d_x`
/// repeated (not a scalar multiply and a register broadcast), and the four tokens' `m_w*s_x`
/// terms are summed in one 4-lane multiply and add per row. `s4` and `d8` hold the group's
/// `s` and (repeated) `d` terms as `[block][token]`. Safety: as [`tile`], and `s4`, `d8` hold
/// `4 * a.nb` entries (checked here).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_tile(
    wp: [*const u8; 2],
    a: &Q8_1Rows,
    t0: usize,
    s4: &[f32],
    d8: &[[f32; 8]],
) -> [[f32; 4]; 2] {
    let nb = a.nb;
    assert!(s4.len() >= 4 * nb && d8.len() >= 4 * nb);
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let mut summs = [_mm_setzero_ps(); 2];
    let (qp, dp, sp) = (a.qs.as_ptr(), d8.as_ptr(), s4.as_ptr());
    for b in 0..nb {
        // SAFETY: 4*b+4 <= 4*nb <= s4.len() (asserted above).
        let sx = unsafe { _mm_loadu_ps(sp.add(4 * b)) };
        // Two interleaved row streams defeat the hardware prefetcher on matrices that do not
        // fit in cache, so ask for the next pair's block now. A hint only: it never faults,
        // and `wrapping_add` keeps the address computation defined past the end of the rows.
        for p in wp {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add((2 * nb + b) * BLOCK_BYTES) as *const i8);
        }
        // (broadcast d_w, expanded quants) of block b of each row; the m_w*s_x terms.
        let mut blk = [(_mm256_setzero_ps(), _mm256_setzero_si256()); 2];
        for ((blk_i, summs_i), p) in blk.iter_mut().zip(&mut summs).zip(wp) {
            // SAFETY: as in `tile`.
            let (h, wq) = unsafe {
                let p = p.add(b * BLOCK_BYTES);
                (std::ptr::read_unaligned(p as *const i32), nibbles(p.add(4)))
            };
            // [d_w, m_w, 0, 0]
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
            let mw = _mm_movehdup_ps(dm);
            let mw = _mm_movelh_ps(mw, mw);
            *summs_i = _mm_add_ps(*summs_i, _mm_mul_ps(mw, sx));
            *blk_i = (_mm256_broadcastss_ps(dm), wq);
        }
        for k in 0..4 {
            let i = (t0 + k) * nb + b;
            // SAFETY: i < l*nb, so quants i*32..i*32+32 lie within a.qs (asserted by `dots`),
            // and 4*b+k < 4*nb <= d8.len(); unaligned loads.
            let (xq, dx) = unsafe {
                (
                    _mm256_loadu_si256(qp.add(i * QK) as *const __m256i),
                    _mm256_loadu_ps(dp.add(4 * b + k) as *const f32),
                )
            };
            for (acc_i, &(dw, wq)) in acc.iter_mut().zip(&blk) {
                let p = _mm256_cvtepi32_ps(block_dot(wq, xq));
                acc_i[k] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw, dx), acc_i[k]);
            }
        }
    }
    let mut out = [[0f32; 4]; 2];
    for ((o, acc_i), summs_i) in out.iter_mut().zip(&acc).zip(summs) {
        let mut sm = [0f32; 4];
        // SAFETY: 4 floats into a 4-float array; unaligned store.
        unsafe { _mm_storeu_ps(sm.as_mut_ptr(), summs_i) };
        for k in 0..4 {
            o[k] = hsum(acc_i[k]) + sm[k];
        }
    }
    out
}
