//! AVX2 kernel for dense f32 weights x f32 activations, computing exactly the dot product that
//! `dense.rs` defines (two 8-lane accumulators taking alternate chunks of 8 values, separate
//! multiply and add, the fixed horizontal reduction, then the tail one value at a time), so it
//! is bit-identical to the scalar reference.
//!
//! A call covers one weight row and up to 4 tokens: each loaded chunk of weights serves 4
//! tokens, and a row is streamed from memory once per matmul. Every (row, token) pair runs the
//! same operations in the same order whatever its tile, so a result never depends on the batch
//! (see the invariant in `matrix.rs`).

use std::arch::x86_64::*;

use super::dense::{reduce8, F32Rows, CHUNK, VALUE_BYTES};

/// `yt[i*l + t]` = dot of f32 weight row `i` of `w` with token `t` of `a`. Caller guarantees
/// AVX2 is available (`Isa::Avx2.available()`).
pub(super) fn dots_f32(w: &[u8], a: &F32Rows, yt: &mut [f32]) {
    let (l, cols) = (a.l, a.cols);
    if l == 0 {
        return;
    }
    let rows = yt.len() / l;
    // These checks make every pointer access below in bounds; they are O(1) per call.
    assert!(yt.len() == rows * l && w.len() >= rows * cols * VALUE_BYTES);
    assert!(a.x.len() >= l * cols);
    for r in 0..rows {
        let mut t = 0;
        // SAFETY (both `tile` calls): the caller checked the CPU features (the only
        // precondition of a `target_feature` fn); row r < rows and tokens t..t+N <= l are
        // within the slices, as asserted above.
        while t + 4 <= l {
            unsafe { tile::<4>(w, a, r, t, yt) };
            t += 4;
        }
        while t < l {
            unsafe { tile::<1>(w, a, r, t, yt) };
            t += 1;
        }
    }
}

/// Row `r` of `w` against tokens `t0..t0+N` of `a`, into `yt[r * l + token]`.
/// Safety: AVX2 available; that row and those tokens exist (`w` holds `(r+1) * cols` values,
/// `a.x` holds `t0+N` rows of `cols`; checked by `dots_f32`).
#[target_feature(enable = "avx2")]
unsafe fn tile<const N: usize>(w: &[u8], a: &F32Rows, r: usize, t0: usize, yt: &mut [f32]) {
    let (l, cols) = (a.l, a.cols);
    let chunks = cols / CHUNK;
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    // SAFETY: row r starts at r*cols*4 <= w.len() (in bounds, or one past the end when cols = 0).
    let wp = unsafe { w.as_ptr().add(r * cols * VALUE_BYTES) } as *const f32;
    let xp = a.x.as_ptr();
    // Chunk c adds into accumulator c % 2; unrolled by two so both stay in registers.
    let mut c = 0;
    while c < chunks {
        // SAFETY: c < chunks, so this chunk lies within row r and within every token's row.
        unsafe { step::<N>(wp, xp, cols, t0, c, 0, &mut acc) };
        if c + 1 < chunks {
            // SAFETY: as above for chunk c + 1 < chunks.
            unsafe { step::<N>(wp, xp, cols, t0, c + 1, 1, &mut acc) };
        }
        c += 2;
    }
    for (k, acc_k) in acc.iter().enumerate() {
        let mut s = [0f32; CHUNK];
        // SAFETY: `s` holds 8 floats; unaligned store.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), _mm256_add_ps(acc_k[0], acc_k[1])) };
        let mut sum = reduce8(&s);
        let x = &a.x[(t0 + k) * cols..(t0 + k + 1) * cols];
        for (i, xi) in x.iter().enumerate().skip(chunks * CHUNK) {
            // SAFETY: i < cols, within row r.
            sum += unsafe { std::ptr::read_unaligned(wp.add(i)) } * xi;
        }
        yt[r * l + t0 + k] = sum;
    }
}

/// Chunk `c` of the row at `wp` times chunk `c` of tokens `t0..t0+N` (rows of `cols` at `xp`),
/// added into accumulator `slot` of each token.
/// Safety: AVX2 available; chunk `c` (values `8c..8c+8`) exists in the weight row and in those
/// tokens' rows.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn step<const N: usize>(
    wp: *const f32,
    xp: *const f32,
    cols: usize,
    t0: usize,
    c: usize,
    slot: usize,
    acc: &mut [[__m256; 2]; N],
) {
    // SAFETY: in bounds by the caller's precondition; unaligned loads (the bytes of a QTensor
    // carry no alignment promise for this cast).
    let wv = unsafe { _mm256_loadu_ps(wp.add(c * CHUNK)) };
    for (k, acc_k) in acc.iter_mut().enumerate() {
        // SAFETY: as above, for token t0 + k.
        let xv = unsafe { _mm256_loadu_ps(xp.add((t0 + k) * cols + c * CHUNK)) };
        acc_k[slot] = _mm256_add_ps(acc_k[slot], _mm256_mul_ps(wv, xv));
    }
}
