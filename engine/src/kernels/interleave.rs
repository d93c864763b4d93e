//! Activations re-laid out for the lane-per-pair AVX2 tiles (`avx2_lanes.rs`): built once per
//! matmul from the row-major quantized activations (on first use, shared by every row tile)
//! and read-only afterwards. Plain data movement, portable.
//!
//! Within a block, values go by groups of 4 (`k = 0..8`: values `4k..4k+4`). For each group of 8
//! tokens, `x8[g][b][k]` is 32 bytes: group `k` of block `b` of tokens `8g..8g+8` in order, so
//! `maddubs` against a weight group broadcast to all 8 dwords gives each token its own lanes.
//! When 4 to 7 tokens are left after the groups of 8, `x4[b][j]` holds the next 4 tokens
//! (A, B, C, D), each twice (`A A B B C C D D`) for two rows interleaved dword by dword, group
//! `K4_ORDER[j]` (the order `unpack{lo,hi}_epi32` of two rows' expanded blocks leaves them in).

use super::matrix::QK;

/// The value group (of 4) held by qword `j` of two rows' blocks interleaved by
/// `[unpacklo_epi32, unpackhi_epi32]` of their 32 expanded bytes.
pub(crate) const K4_ORDER: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

/// See the module docs.
pub(crate) struct Interleaved {
    /// Tokens in `x8` (a multiple of 8).
    pub l8: usize,
    /// Whether `x4` holds tokens `l8..l8+4`.
    pub has4: bool,
    /// `d_x`, `[block][token]` (all `l` tokens).
    pub d: Vec<f32>,
    /// `s_x` (Q8_1 activations only, else empty), `[block][token]`.
    pub s: Vec<f32>,
    pub x8: Vec<i8>,
    pub x4: Vec<i8>,
}

impl Interleaved {
    /// From `l` rows of `nb` blocks: quants `qs` (row-major), scales `d` and (Q8_1) sums `s`.
    pub(crate) fn new(l: usize, nb: usize, qs: &[i8], d: &[f32], s: &[f32]) -> Interleaved {
        assert!(qs.len() >= l * nb * QK && d.len() >= l * nb);
        assert!(s.is_empty() || s.len() >= l * nb);
        let transpose = |v: &[f32]| {
            let mut out = vec![0f32; l * nb];
            for t in 0..l {
                for b in 0..nb {
                    out[b * l + t] = v[t * nb + b];
                }
            }
            out
        };
        let group = |t: usize, b: usize, k: usize| {
            let i = (t * nb + b) * QK + 4 * k;
            &qs[i..i + 4]
        };
        let l8 = l / 8 * 8;
        let mut x8 = Vec::with_capacity(l8 * nb * QK);
        for g in 0..l8 / 8 {
            for b in 0..nb {
                for k in 0..8 {
                    for t in 8 * g..8 * g + 8 {
                        x8.extend_from_slice(group(t, b, k));
                    }
                }
            }
        }
        let has4 = l - l8 >= 4;
        let mut x4 = Vec::new();
        if has4 {
            x4.reserve(8 * nb * QK);
            for b in 0..nb {
                for k in K4_ORDER {
                    for t in l8..l8 + 4 {
                        x4.extend_from_slice(group(t, b, k));
                        x4.extend_from_slice(group(t, b, k));
                    }
                }
            }
        }
        Interleaved {
            l8,
            has4,
            d: transpose(d),
            s: if s.is_empty() {
                Vec::new()
            } else {
                transpose(s)
            },
            x8,
            x4,
        }
    }
}
