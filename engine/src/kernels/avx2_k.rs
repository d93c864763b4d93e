//! What the AVX2 K-quant kernels (`avx2_q4k.rs`, `avx2_q6k.rs`) share: the driver that runs a
//! format's one-row tiles over every weight row and token (4 tokens per call, then 1), and an
//! exact horizontal sum of 8 i32 lanes.

use std::arch::x86_64::*;

use super::q8_k::{Q8KRows, QK_K};

/// A format's tile: one weight row (`a.nb` blocks) against tokens `t0..t0+out.len()`.
/// Safety: AVX2/FMA/F16C available; `a` holds those tokens.
pub(super) type Tile = unsafe fn(row: &[u8], a: &Q8KRows, t0: usize, out: &mut [f32]);

/// `yt[i*l + t]` = dot of weight row `i` of `w` (blocks of `block_bytes`) with token `t` of
/// `a`, through `tile4` (4 tokens) and `tile1` (1 token). Caller guarantees AVX2, FMA and
/// F16C are available (`Isa::Avx2.available()`).
pub(super) fn dots(w: &[u8], a: &Q8KRows, yt: &mut [f32], block_bytes: usize, tile4: Tile, tile1: Tile) {
    let (nb, l) = (a.nb, a.l);
    if l == 0 {
        return;
    }
    let rows = yt.len() / l;
    // These checks make every pointer access in the tiles in bounds; they are O(1) per call.
    assert!(yt.len() == rows * l && w.len() >= rows * nb * block_bytes);
    assert!(a.qs.len() >= l * nb * QK_K && a.d.len() >= l * nb && a.sums.len() >= l * nb * 16);
    for r in 0..rows {
        let row = &w[r * nb * block_bytes..(r + 1) * nb * block_bytes];
        let mut t = 0;
        // SAFETY (both calls): the caller checked the CPU features (the only precondition of
        // a `target_feature` fn); `row` holds nb blocks and tokens t..t+N <= l exist in `a`.
        while t + 4 <= l {
            unsafe { tile4(row, a, t, &mut yt[r * l + t..r * l + t + 4]) };
            t += 4;
        }
        while t < l {
            unsafe { tile1(row, a, t, &mut yt[r * l + t..r * l + t + 1]) };
            t += 1;
        }
    }
}

/// Exact horizontal sum of 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
    _mm_cvtsi128_si32(s)
}
