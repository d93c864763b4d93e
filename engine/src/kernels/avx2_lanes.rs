//! AVX2 + FMA + F16C kernels for Q4_1 x Q8_1 and Q8_0/Q4_0 x Q8_0 that keep one
//! (weight row, token) pair per i32/f32 lane (semantics in `q4_1.rs`, `q8_0.rs`, `q4_0.rs`).
//!
//! Each pair's exact integer block sum lands in its own lane, and the scaling runs once per 8
//! pairs: `acc += cvt(sum) * (d_w*d_x) (+ m_w*s_x for Q4_1)`, the scalar reference's arithmetic
//! operation for operation (`q4_1::row_dots_scalar`, `q8_0::scalar_dots`), so every lane equals
//! the scalar result bit for bit, whatever tile it ran in: the batch invariant of `matrix.rs`
//! holds by construction and the tests compare bits with scalar.
//!
//! Tiles, by how the integer sums reach their lanes:
//! - 2 rows x 8 tokens (4 rows with VNNI): the activations interleaved per group of 4 values (`interleave.rs`),
//!   a weight group broadcast to 8 dwords (a load, not a shuffle), `maddubs` per group; Q4_1
//!   sums the 8 groups in i16 (at most 16*15*127) and widens once, Q8_0/Q4_0
//!   (`maddubs(|w|, sign(x, w))`) widen each. No shuffles at all; each activation load serves
//!   both rows.
//! - 2 rows x 4 tokens (4 to 7 tokens left): the same with the two rows' groups interleaved
//!   dword by dword and each token's group twice; lanes (row, token) = (0,A) (1,A) (0,B) ...
//! - 8 rows x 1 token (single tokens, the last 1-3): per row `maddubs` + `madd`, then a
//!   blend/shuffle tree packs the 8 rows' sums into one vector (`hadd` would cost two shuffles
//!   and run at one per two cycles on Zen 3); the next 8 rows are prefetched.
//!
//! Rows go in blocks of 8 (so their weights stay in L1 for every token tile); a block's rows
//! past the matrix's end repeat its last row (computed, not written), so any row count works.
//!
//! The per-block loads and integer sums the tiles share are in `avx2_block.rs`.
//!
//! With VNNI (`Vnni`, chosen by `kernels::vnni()`), `vpdpbusd` replaces each `maddubs` + `madd`
//! (+ the i16 adds of Q4_1): the same exact integer sums, so the same bits, in half the
//! instructions. The tiles are `#[inline(always)]` bodies generic over the variant, compiled
//! into one `#[target_feature]` loop per variant (`rows_avx2`, `rows_avxvnni`,
//! `rows_avx512vnni`): the VNNI instruction only runs inside a function built for it.

use std::arch::x86_64::*;

use super::avx2_reduce::{reduce8, reduce8_i16};
use super::interleave::Interleaved;
use super::matrix::QK;
use super::q4_1::Q8_1Rows;
use super::q8_0::Q8_0Rows;
use super::avx2_block::*;
use super::Vnni;


/// What the tiles read: the row-major quants (8x1 tiles) and the interleaved layout.
struct Acts<'a> {
    l: usize,
    nb: usize,
    qs: &'a [i8],
    il: &'a Interleaved,
}

/// The interleaved activations of `a`, built on first use (`Format::prepare` calls this before a
/// matmul's parallel region, so that no task waits for another to build them).
pub(super) fn prepare_q4_1(a: &Q8_1Rows) -> &Interleaved {
    a.lanes.get_or_init(|| Interleaved::new(a.l, a.nb, &a.qs, &a.d, &a.s))
}

/// As [`prepare_q4_1`] for Q8_0 activations (of Q8_0 and Q4_0 weights).
pub(super) fn prepare_q8_0(a: &Q8_0Rows) -> &Interleaved {
    a.lanes.get_or_init(|| Interleaved::new(a.l, a.nb, &a.qs, &a.d, &[]))
}

/// `yt[i*l + t]` = dot of Q4_1 weight row `i` of `w` with token `t` of `a`, with `vnni`'s
/// integer dots. Caller guarantees AVX2, FMA and F16C (`Isa::Avx2.available()`) and `vnni`
/// (`Vnni::available`) are available.
pub(super) fn dots_q4_1(vnni: Vnni, w: &[u8], a: &Q8_1Rows, yt: &mut [f32]) {
    let il = prepare_q4_1(a);
    let acts = Acts {
        l: a.l,
        nb: a.nb,
        qs: &a.qs,
        il,
    };
    dots::<Q4_1>(vnni, w, &acts, yt)
}

/// As [`dots_q4_1`] for Q8_0 weights and Q8_0 activations.
pub(super) fn dots_q8_0(vnni: Vnni, w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
    dots::<Q8_0>(vnni, w, &q8_acts(a), yt)
}

/// As [`dots_q4_1`] for Q4_0 weights and Q8_0 activations.
pub(super) fn dots_q4_0(vnni: Vnni, w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
    dots::<Q4_0>(vnni, w, &q8_acts(a), yt)
}

fn q8_acts(a: &Q8_0Rows) -> Acts<'_> {
    let il = prepare_q8_0(a);
    Acts {
        l: a.l,
        nb: a.nb,
        qs: &a.qs,
        il,
    }
}

/// Rows in blocks of 8 (their weights stay in L1 for every token tile), each against the
/// groups of 8 tokens, then the group of 4, then the last 1-3 tokens one by one.
fn dots<const K: u8>(vnni: Vnni, w: &[u8], a: &Acts, yt: &mut [f32]) {
    let (nb, l, il) = (a.nb, a.l, a.il);
    if l == 0 || yt.is_empty() {
        return;
    }
    let rows = yt.len() / l;
    // These checks make every pointer access of the tiles in bounds.
    assert!(yt.len() == rows * l && w.len() >= rows * nb * block_bytes(K));
    assert!(a.qs.len() >= l * nb * QK && il.d.len() >= l * nb);
    assert!(K != Q4_1 || il.s.len() >= l * nb);
    assert!(il.l8 + 4 * usize::from(il.has4) <= l && il.x8.len() >= il.l8 * nb * QK);
    assert!(!il.has4 || il.x4.len() >= 8 * nb * QK);
    // SAFETY: the caller checked the CPU features (AVX2/FMA/F16C and `vnni`'s), the only
    // precondition of these `target_feature` fns besides the bounds asserted above.
    unsafe {
        match vnni {
            Vnni::None => rows_avx2::<K>(w, a, yt),
            Vnni::Avx => rows_avxvnni::<K>(w, a, yt),
            Vnni::Avx512 => rows_avx512vnni::<K>(w, a, yt),
        }
    }
}

/// `rows::<K, NO_VNNI>` built for AVX2. Safety: AVX2/FMA/F16C available, `dots`'s asserts hold.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<const K: u8>(w: &[u8], a: &Acts, yt: &mut [f32]) {
    // SAFETY: the caller's precondition.
    unsafe { rows::<K, NO_VNNI>(w, a, yt) }
}

/// `rows::<K, AVX_VNNI>` built for AVX2 + AVX-VNNI. Safety: as [`rows_avx2`], and AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn rows_avxvnni<const K: u8>(w: &[u8], a: &Acts, yt: &mut [f32]) {
    // SAFETY: the caller's precondition.
    unsafe { rows::<K, AVX_VNNI>(w, a, yt) }
}

/// `rows::<K, AVX512_VNNI>` built for AVX2 + AVX-512 VNNI/VL (256-bit vectors only).
/// Safety: as [`rows_avx2`], and AVX512-VNNI + AVX512-VL.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn rows_avx512vnni<const K: u8>(w: &[u8], a: &Acts, yt: &mut [f32]) {
    // SAFETY: the caller's precondition.
    unsafe { rows::<K, AVX512_VNNI>(w, a, yt) }
}


/// The row and token loops of [`dots`]; inlined into a `rows_*` wrapper, so it runs with that
/// wrapper's CPU features. Safety: `V`'s features available, `dots`'s asserts hold.
#[inline(always)]
unsafe fn rows<const K: u8, const V: u8>(w: &[u8], a: &Acts, yt: &mut [f32]) {
    let (nb, l, il) = (a.nb, a.l, a.il);
    let rows = yt.len() / l;
    let row_bytes = nb * block_bytes(K);
    let row = |r: usize| w[r.min(rows - 1) * row_bytes..].as_ptr();
    // SAFETY (every tile call): rows are clamped to the matrix and tokens stay below l, so
    // every access lies within the slices `dots` asserted; the features are the caller's.
    for r0 in (0..rows).step_by(8) {
        let r1 = (r0 + 8).min(rows);
        for g in 0..il.l8 / 8 {
            // 4 rows a tile with VNNI (its activation loads then serve 4 rows: 1.15-1.4x on a
            // Xeon), 2 with `maddubs` (whose extra instructions leave no registers for 4).
            if V != NO_VNNI {
                unsafe { group8::<K, V, 4>(&row, rows, (r0, r1), g, a, yt) };
            } else {
                unsafe { group8::<K, V, 2>(&row, rows, (r0, r1), g, a, yt) };
            }
        }
        let mut t = il.l8;
        if il.has4 {
            for r in (r0..r1).step_by(2) {
                let next = (r + 2 < rows).then(|| row(r + 2));
                let y = unsafe { tile4::<K, V>([row(r), row(r + 1)], a, next) };
                for (i, yi) in y.iter().enumerate().take(r1 - r) {
                    yt[(r + i) * l + t..(r + i) * l + t + 4].copy_from_slice(yi);
                }
            }
            t += 4;
        }
        let next = (r1 < rows).then(|| row(r1));
        while t < l {
            let y = unsafe { tile1::<K, V>(std::array::from_fn(|i| row(r0 + i)), a, t, next) };
            for (r, v) in (r0..r1).zip(y) {
                yt[r * l + t] = v;
            }
            t += 1;
        }
    }
}

/// Rows `r0..r1` (a block of at most 8, `R` at a time) against token group `g`: `tile8`s into
/// `yt`. Safety: as [`rows`].
#[inline(always)]
unsafe fn group8<const K: u8, const V: u8, const R: usize>(
    row: &impl Fn(usize) -> *const u8,
    rows: usize,
    (r0, r1): (usize, usize),
    g: usize,
    a: &Acts,
    yt: &mut [f32],
) {
    let l = a.l;
    for r in (r0..r1).step_by(R) {
        let next = (g == 0 && r + 8 < rows).then(|| std::array::from_fn(|i| row(r + 8 + i)));
        // SAFETY: the caller's precondition.
        let y = unsafe { tile8::<K, V, R>(std::array::from_fn(|i| row(r + i)), a, g, next) };
        for (i, yi) in y.iter().enumerate().take(r1 - r) {
            yt[(r + i) * l + 8 * g..(r + i) * l + 8 * g + 8].copy_from_slice(yi);
        }
    }
}


/// `R` weight rows (`a.nb` blocks at each `wp[i]`) against tokens `8g..8g+8` (interleaved group
/// `g`): `[row][token]`; prefetches `next` (the rows 8 further on) as it goes.
/// Safety: AVX2/FMA/F16C available, the rows readable, group `g` within `a.il.x8` (checked by
/// `dots`).
#[inline(always)]
unsafe fn tile8<const K: u8, const V: u8, const R: usize>(
    wp: [*const u8; R],
    a: &Acts,
    g: usize,
    next: Option<[*const u8; R]>,
) -> [[f32; 8]; R] {
    let (nb, l, bb) = (a.nb, a.l, block_bytes(K));
    let mut acc = [_mm256_setzero_ps(); R];
    let mut wu: [Buf; R] = std::array::from_fn(|_| Buf([0u8; 64]));
    let mut ws: [Buf; R] = std::array::from_fn(|_| Buf([0u8; 64]));
    // SAFETY (pointer offsets and reads): within the slices checked by `dots`.
    unsafe {
        let xg = a.il.x8.as_ptr().add(g * nb * 8 * QK);
        let (dp, sp) = (
            a.il.d.as_ptr().add(8 * g),
            a.il.s.as_ptr().wrapping_add(8 * g),
        );
        for b in 0..nb {
            let mut hdr = [0i32; R];
            if let Some(n) = next {
                for p in n {
                    // A hint only: it never faults; `wrapping_add` keeps the address defined.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(b * bb) as *const i8);
                }
            }
            let sums = if V != NO_VNNI && K != Q4_0 {
                // The groups broadcast straight from the packed blocks: no expanded copy.
                for (h, p) in hdr.iter_mut().zip(wp) {
                    *h = std::ptr::read_unaligned(p.add(b * bb) as *const i32);
                }
                let qoff = if K == Q4_1 { 4 } else { 2 };
                let q = std::array::from_fn(|i| wp[i].add(b * bb + qoff));
                group_sums_direct::<K, V, R>(q, xg.add(b * 8 * QK))
            } else {
                let mut sgn = [std::ptr::null(); R];
                for i in 0..R {
                    let p = wp[i].add(b * bb);
                    let (h, u, s) = load_block::<K>(p);
                    hdr[i] = h;
                    _mm256_store_si256(wu[i].0.as_mut_ptr() as *mut __m256i, u);
                    if K == Q4_0 {
                        _mm256_store_si256(ws[i].0.as_mut_ptr() as *mut __m256i, s);
                    }
                    sgn[i] = if K == Q8_0 { p.add(2) } else { ws[i].0.as_ptr() };
                }
                // Broadcast from memory (a load port), not by shuffles of the registers.
                std::hint::black_box((&mut wu, &mut ws));
                let wup: [*const u8; R] = std::array::from_fn(|i| wu[i].0.as_ptr());
                group_sums::<K, V, 4, R>(wup, sgn, xg.add(b * 8 * QK))
            };
            let dx = _mm256_loadu_ps(dp.add(b * l));
            let sx = if K == Q4_1 {
                _mm256_loadu_ps(sp.add(b * l))
            } else {
                dx
            };
            for i in 0..R {
                // The scalar reference's `sumi as f32 * (d_w * d_x) [+ m_w * s_x]`, then `+=`.
                let f = header(hdr[i]);
                let mut v = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(sums[i]),
                    _mm256_mul_ps(_mm256_broadcastss_ps(f), dx),
                );
                if K == Q4_1 {
                    let mw = _mm256_broadcastss_ps(_mm_movehdup_ps(f));
                    v = _mm256_add_ps(v, _mm256_mul_ps(mw, sx));
                }
                acc[i] = _mm256_add_ps(acc[i], v);
            }
        }
    }
    let mut out = [[0f32; 8]; R];
    for (o, v) in out.iter_mut().zip(acc) {
        // SAFETY: 8 floats into an 8-float array; unaligned store.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
    }
    out
}

/// Two weight rows against the 4 tokens `a.il.l8..+4` (`a.il.x4`): `[row][token]`.
/// Safety: as [`tile8`], with `a.il.has4`.
#[inline(always)]
unsafe fn tile4<const K: u8, const V: u8>(
    wp: [*const u8; 2],
    a: &Acts,
    next: Option<*const u8>,
) -> [[f32; 4]; 2] {
    let (nb, l, bb) = (a.nb, a.l, block_bytes(K));
    let mut acc = _mm256_setzero_ps();
    let (mut wu, mut ws) = (Buf([0u8; 64]), Buf([0u8; 64]));
    // Lane 2k+i is (row i, token k).
    let rows_dw = _mm256_setr_epi32(0, 2, 0, 2, 0, 2, 0, 2);
    let rows_mw = _mm256_setr_epi32(1, 3, 1, 3, 1, 3, 1, 3);
    let toks = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    // SAFETY (pointer offsets and reads): within the slices checked by `dots`.
    unsafe {
        let t0 = a.il.l8;
        let (dp, sp) = (a.il.d.as_ptr().add(t0), a.il.s.as_ptr().wrapping_add(t0));
        for b in 0..nb {
            if let Some(n) = next {
                // The next pair of rows (2 * nb contiguous blocks); a hint, never faults.
                _mm_prefetch::<_MM_HINT_T0>(n.wrapping_add(2 * b * bb) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(n.wrapping_add((2 * b + 1) * bb) as *const i8);
            }
            let (h0, u0, s0) = load_block::<K>(wp[0].add(b * bb));
            let (h1, u1, s1) = load_block::<K>(wp[1].add(b * bb));
            // Qword j: the two rows' value group K4_ORDER[j], as `interleave.rs` expects.
            let up = wu.0.as_mut_ptr() as *mut __m256i;
            _mm256_store_si256(up, _mm256_unpacklo_epi32(u0, u1));
            _mm256_store_si256(up.add(1), _mm256_unpackhi_epi32(u0, u1));
            if K != Q4_1 {
                let sgp = ws.0.as_mut_ptr() as *mut __m256i;
                _mm256_store_si256(sgp, _mm256_unpacklo_epi32(s0, s1));
                _mm256_store_si256(sgp.add(1), _mm256_unpackhi_epi32(s0, s1));
            }
            std::hint::black_box((&mut wu, &mut ws));
            let xb = a.il.x4.as_ptr().add(b * 8 * QK);
            let [sumi] = group_sums::<K, V, 8, 1>([wu.0.as_ptr()], [ws.0.as_ptr()], xb);
            // [d0, m0, d1, m1]
            let f = _mm_cvtph_ps(_mm_insert_epi32::<1>(_mm_cvtsi32_si128(h0), h1));
            let f = _mm256_castps128_ps256(f);
            let dx = _mm256_castps128_ps256(_mm_loadu_ps(dp.add(b * l)));
            let dx = _mm256_permutevar8x32_ps(dx, toks);
            let dw = _mm256_permutevar8x32_ps(f, rows_dw);
            let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), _mm256_mul_ps(dw, dx));
            if K == Q4_1 {
                let sx = _mm256_castps128_ps256(_mm_loadu_ps(sp.add(b * l)));
                let sx = _mm256_permutevar8x32_ps(sx, toks);
                v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_permutevar8x32_ps(f, rows_mw), sx));
            }
            acc = _mm256_add_ps(acc, v);
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats into an 8-float array; unaligned store.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut out = [[0f32; 4]; 2];
    for (j, v) in lanes.into_iter().enumerate() {
        out[j % 2][j / 2] = v;
    }
    out
}

/// Eight weight rows (block pointers `wp`) against token `t`, prefetching the next 8 rows
/// (`next`, `8 * a.nb` contiguous blocks) as it goes: 8 interleaved row streams otherwise
/// stream from DRAM worse than one. Safety: AVX2/FMA/F16C available, each `wp[i]` points at
/// `a.nb` readable blocks, `t < a.l` (checked by `dots`).
#[inline(always)]
unsafe fn tile1<const K: u8, const V: u8>(
    wp: [*const u8; 8],
    a: &Acts,
    t: usize,
    next: Option<*const u8>,
) -> [f32; 8] {
    let (nb, l, bb) = (a.nb, a.l, block_bytes(K));
    let mut acc = _mm256_setzero_ps();
    // Per 128-bit half: the four d (low 16 bits of each header), then the four m.
    let split = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    // SAFETY (pointer offsets and reads): within the slices checked by `dots`.
    unsafe {
        let xp = a.qs.as_ptr().add(t * nb * QK);
        for b in 0..nb {
            if let Some(n) = next {
                // A hint only: it never faults; `wrapping_add` keeps the address defined.
                let mut o = b * 8 * bb;
                while o < (b + 1) * 8 * bb {
                    _mm_prefetch::<_MM_HINT_T0>(n.wrapping_add(o) as *const i8);
                    o += 64;
                }
            }
            let x = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
            let mut hdr = [0i32; 8];
            let mut m = [_mm256_setzero_si256(); 8];
            for i in 0..8 {
                let (h, u, s) = load_block::<K>(wp[i].add(b * bb));
                hdr[i] = h;
                m[i] = if V != NO_VNNI {
                    let x = if K == Q4_1 { x } else { _mm256_sign_epi8(x, s) };
                    dpbusd::<V>(_mm256_setzero_si256(), u, x)
                } else if K == Q4_1 {
                    _mm256_maddubs_epi16(u, x)
                } else {
                    block_dot::<K>(u, s, x)
                };
            }
            let sumi = if K == Q4_1 && V == NO_VNNI {
                reduce8_i16(&m)
            } else {
                reduce8(&m)
            };
            let hv = _mm256_setr_epi32(
                hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7],
            );
            // [d0..d3, d4..d7 | m0..m3, m4..m7]
            let hv = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(hv, split));
            let dw = _mm256_cvtph_ps(_mm256_castsi256_si128(hv));
            let dx = _mm256_set1_ps(*a.il.d.get_unchecked(b * l + t));
            let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), _mm256_mul_ps(dw, dx));
            if K == Q4_1 {
                let mw = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(hv));
                let sx = _mm256_set1_ps(*a.il.s.get_unchecked(b * l + t));
                v = _mm256_add_ps(v, _mm256_mul_ps(mw, sx));
            }
            acc = _mm256_add_ps(acc, v);
        }
    }
    let mut out = [0f32; 8];
    // SAFETY: 8 floats into an 8-float array; unaligned store.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

#[cfg(test)]
#[path = "avx2_lanes_tests.rs"]
mod tests;
