//! Attention over the paged KV cache, on the CPU, in plain Rust: RoPE at each token's own
//! position, writing a batch's keys/values into its sequences' blocks, and causal (optionally
//! sliding-window) grouped-query attention of every query over its own sequence's blocks.
//!
//! Storage of one layer (`LayerKv`): values `[n_blocks, kv_heads, block_size, head_dim]` and
//! keys transposed inside each block, `[n_blocks, kv_heads, head_dim, block_size]`, so that the
//! scores of 8 consecutive keys are 8 vector lanes (no horizontal sums); f16 (`--kv-cache-dtype`,
//! the default: half the bytes to read; single-stream decode +30% at 1,100-token contexts) or
//! f32, widened to f32 as they are read (exactly: the F16C instruction in the AVX2 build, `half`
//! elsewhere). Allocated zeroed (untouched pages cost no RSS).
//!
//! Determinism (what batching and the prefix cache rely on): every output row depends only on
//! its own query and its own sequence's keys/values, summed in position order; which other
//! sequences share the batch, how a prompt was chunked, the thread count and the instruction set
//! change nothing, bit for bit (the AVX2 build of the loops differs only in register width: the
//! per-lane arithmetic and the reduction order are the same; the dot products and weighted sums
//! use `mul_add`, one rounding, which the AVX2 build runs as FMA and the portable build as the
//! target's FMA (aarch64) or libm's `fmaf` (x86-64 without AVX2: slow, but the same values).
//!
//! Long contexts: a query's keys past the first [`KEY_CHUNK`] positions are split into chunks at
//! fixed multiples of it, one work item each (their softmax partial sums merged in chunk order),
//! so a lone long sequence still gives every thread work; the split depends only on the query's
//! position, so the determinism above holds, and a query within one chunk gets exactly the
//! unsplit result.

use std::cell::RefCell;
use std::sync::Mutex;

#[path = "attention_math.rs"]
mod math;

use math::{accumulate, heads, key_scores, softmax_unnormalized, LANES, MAX_FUSED};
#[cfg(test)]
use math::{exp8, score1};

use super::config::RopeStyle;
use super::placement::KvDtype;
use crate::kernels::{isa, Isa};

/// A sequence's slice of a batch: rows `row..row+len` of the batch are its tokens at positions
/// `pos..pos+len`; `blocks` is its block table (covering at least `pos+len` positions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span<'a> {
    pub row: usize,
    pub len: usize,
    pub pos: usize,
    pub blocks: &'a [u32],
}

/// Shape facts attention needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub sliding_window: Option<usize>,
}

/// Where KV head `kv_head`'s part of `block` starts (in `k` and in `v`: both hold
/// `block_size * head_dim` values per block and head).
fn base(g: &Geometry, block: u32, kv_head: usize) -> usize {
    (block as usize * g.n_kv_heads + kv_head) * g.block_size * g.head_dim
}

/// One layer's keys and values, in the element type chosen at load.
pub(crate) enum LayerKv {
    F16(Cache<F16>),
    F32(Cache<f32>),
}

/// Keys and values of one layer (layouts in the module docs).
pub(crate) struct Cache<E> {
    k: Vec<E>,
    v: Vec<E>,
}

/// A KV-cache element type.
pub(crate) trait Elem: Copy + Default + Send + Sync {
    fn from_f32(x: f32) -> Self;
    /// `dst[i] = from_f32(src[i])` (the same values, converted a slice at a time).
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        for (o, &x) in dst.iter_mut().zip(src) {
            *o = Self::from_f32(x);
        }
    }
    fn to_f32(self) -> f32;
    /// The first 8 elements of `s` as f32; `SIMD`: the caller runs with AVX2 and F16C.
    fn get8<const SIMD: bool>(s: &[Self]) -> [f32; LANES];
}

impl Elem for f32 {
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn get8<const SIMD: bool>(s: &[f32]) -> [f32; LANES] {
        s[..LANES].try_into().expect("8 values")
    }
}

/// The bits of an IEEE half. A plain `u16`, not a wrapper: `vec![0u16; n]` is a zeroed
/// allocation whose untouched pages cost no RSS (a wrapper's `vec!` writes every element).
pub(crate) type F16 = u16;

impl Elem for F16 {
    fn from_f32(x: f32) -> F16 {
        half::f16::from_f32(x).to_bits()
    }
    fn from_f32_slice(src: &[f32], dst: &mut [F16]) {
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        // One feature check and F16C vectors for the slice (`from_f32` checks per value; the
        // same rounding either way).
        dst.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(src);
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
    #[inline(always)]
    fn get8<const SIMD: bool>(s: &[F16]) -> [f32; LANES] {
        let s = &s[..LANES];
        #[cfg(target_arch = "x86_64")]
        if SIMD {
            use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
            let mut out = [0f32; LANES];
            // SAFETY: `s` holds 8 halves (16 bytes, read unaligned); the caller has F16C (`SIMD`).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr() as *const __m128i))) };
            return out;
        }
        std::array::from_fn(|l| s[l].to_f32())
    }
}

impl LayerKv {
    pub(crate) fn new(g: &Geometry, n_blocks: usize, dtype: KvDtype) -> LayerKv {
        let n = n_blocks * g.n_kv_heads * g.block_size * g.head_dim;
        match dtype {
            KvDtype::F16 => LayerKv::F16(Cache { k: vec![0; n], v: vec![0; n] }),
            KvDtype::F32 => LayerKv::F32(Cache { k: vec![0.0; n], v: vec![0.0; n] }),
        }
    }

    /// Stores the keys/values (`[rows, kv_heads*head_dim]`) of every span at its positions.
    pub(crate) fn write(&mut self, g: &Geometry, spans: &[Span], k: &[f32], v: &[f32]) {
        match self {
            LayerKv::F16(c) => c.write(g, spans, k, v),
            LayerKv::F32(c) => c.write(g, spans, k, v),
        }
    }

    /// Asks the CPU for the cache lines [`LayerKv::write`] will store the spans' first rows in each
    /// block to (a row's keys, transposed, touch a line per 1-2 dims of each KV head, 32 lines of
    /// an f16 head of 64), so that the write, serial on the team's opener, finds them near instead
    /// of waiting on each in turn. A hint: call it some work before the write.
    pub(crate) fn prefetch_writes(&self, g: &Geometry, spans: &[Span]) {
        match self {
            LayerKv::F16(c) => c.prefetch_writes(g, spans),
            LayerKv::F32(c) => c.prefetch_writes(g, spans),
        }
    }
}

impl<E: Elem> Cache<E> {
    /// See [`LayerKv::prefetch_writes`].
    fn prefetch_writes(&self, g: &Geometry, spans: &[Span]) {
        let (hd, bs) = (g.head_dim, g.block_size);
        // Key dims per 64-byte line (the dims of one slot lie `bs` elements apart).
        let dims_per_line = (64 / (std::mem::size_of::<E>() * bs).max(1)).max(1);
        for s in spans {
            for i in 0..s.len {
                let p = s.pos + i;
                let (block, slot) = (s.blocks[p / bs], p % bs);
                // A block's later rows share these key lines and follow its first row's values.
                if i > 0 && slot > 0 {
                    continue;
                }
                for kvh in 0..g.n_kv_heads {
                    let base = base(g, block, kvh);
                    for d in (0..hd).step_by(dims_per_line) {
                        prefetch(&self.k[base + d * bs + slot..][..1]);
                    }
                    prefetch(&self.v[base + slot * hd..][..hd]);
                }
            }
        }
    }

    /// Stores the keys/values (`[rows, kv_heads*head_dim]`) of every span at its positions.
    pub(crate) fn write(&mut self, g: &Geometry, spans: &[Span], k: &[f32], v: &[f32]) {
        let (hd, bs, width) = (g.head_dim, g.block_size, g.n_kv_heads * g.head_dim);
        let mut key = Vec::new();
        for s in spans {
            for i in 0..s.len {
                let p = s.pos + i;
                let (block, slot) = (s.blocks[p / bs], p % bs);
                let row = (s.row + i) * width;
                for kvh in 0..g.n_kv_heads {
                    let base = base(g, block, kvh);
                    let src = row + kvh * hd;
                    // Keys are stored transposed: converted together, then scattered.
                    key.resize(hd, E::default());
                    E::from_f32_slice(&k[src..src + hd], &mut key);
                    for (d, &x) in key.iter().enumerate() {
                        self.k[base + d * bs + slot] = x;
                    }
                    let dst = base + slot * hd;
                    E::from_f32_slice(&v[src..src + hd], &mut self.v[dst..dst + hd]);
                }
            }
        }
    }
}

/// Queries per parallel work item (a tile of one sequence's tokens for one KV head's query
/// heads).
const QUERY_TILE: usize = 16;

/// Key positions per chunk of a long context: a query whose keys reach past the first chunk has
/// them split at multiples of this (absolute positions, so the split depends only on the
/// query's own position), each chunk a work item of its own (partial softmax sums, merged in
/// chunk order), so that one long sequence keeps every thread busy. Within one chunk nothing
/// changes: the merge of a single chunk is the unsplit result, bit for bit.
const KEY_CHUNK: usize = 512;

/// One parallel work item: queries `t0..t0+n` of span `si`, query heads `h0..h0+heads` (all
/// sharing KV head `h0 / group`, so the item reads that head's keys and values once for all),
/// over their keys in chunk `c` ([`KEY_CHUNK`]) when `split`, else all of them.
#[derive(Debug, Clone, Copy)]
struct Item {
    si: usize,
    h0: usize,
    heads: usize,
    t0: usize,
    n: usize,
    c: usize,
    split: bool,
}

thread_local! {
    /// This thread's buffers for [`attend`]'s work items.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Per-thread buffers of [`attend`]'s work items.
#[derive(Default)]
struct Scratch {
    /// `[heads, keys]` scores, then softmax weights.
    scores: Vec<f32>,
    /// `[heads, head_dim]` weighted sums of values.
    acc: Vec<f32>,
    /// Each head's softmax denominator.
    sums: Vec<f32>,
    /// Each head's largest score (what its weights are relative to).
    maxes: Vec<f32>,
}

/// `q`: `[rows, heads*head_dim]`, already rotated and NOT yet scaled. Returns the attention
/// output `[rows, heads*head_dim]`. The keys/values of every span must have been written.
pub(crate) fn attend(kv: &LayerKv, g: &Geometry, spans: &[Span], q: &[f32]) -> Vec<f32> {
    // A KV head's query heads go together (its keys/values read once for all of them), unless
    // that leaves too few items to keep the pool busy (a lone decode of a short context: one
    // per KV head; a long one has an item per key chunk).
    let tile_chunks: usize = spans
        .iter()
        .map(|s| (0..s.len).step_by(QUERY_TILE).map(|t0| key_chunks(g, s, t0, QUERY_TILE.min(s.len - t0)).len()).sum::<usize>())
        .sum();
    let together = tile_chunks * g.n_kv_heads >= 4 * crate::pool::threads();
    attend_grouped(kv, g, spans, q, if together { g.n_heads / g.n_kv_heads } else { 1 })
}

/// [`attend`] with `per_item` query heads per work item (1 or the heads sharing a KV head).
fn attend_grouped(kv: &LayerKv, g: &Geometry, spans: &[Span], q: &[f32], per_item: usize) -> Vec<f32> {
    match kv {
        LayerKv::F16(c) => attend_in(c, g, spans, q, per_item),
        LayerKv::F32(c) => attend_in(c, g, spans, q, per_item),
    }
}

/// [`attend_grouped`] over a cache of `E`.
fn attend_in<E: Elem>(kv: &Cache<E>, g: &Geometry, spans: &[Span], q: &[f32], per_item: usize) -> Vec<f32> {
    let (nh, hd) = (g.n_heads, g.head_dim);
    let rows: usize = spans.iter().map(|s| s.row + s.len).max().unwrap_or(0);
    let tiles: usize = spans.iter().map(|s| s.len.div_ceil(QUERY_TILE)).sum();
    let mut items = Vec::with_capacity(tiles * nh / per_item);
    for (si, s) in spans.iter().enumerate() {
        for h0 in (0..nh).step_by(per_item) {
            for t0 in (0..s.len).step_by(QUERY_TILE) {
                let n = QUERY_TILE.min(s.len - t0);
                let chunks = key_chunks(g, s, t0, n);
                let split = chunks.len() > 1;
                for c in chunks {
                    items.push(Item { si, h0, heads: per_item.min(nh - h0), t0, n, c, split });
                }
            }
        }
    }
    let use_avx2 = isa() != Isa::Scalar;
    // Per item: `[n, heads, head_dim]` outputs, then (split items) `[n, heads]` (max, sum) pairs.
    let results: Vec<Mutex<Vec<f32>>> =
        items.iter().map(|it| Mutex::new(vec![0.0f32; it.n * it.heads * (hd + 2)])).collect();
    crate::pool::for_each(items.len(), |i| {
        let it = &items[i];
        let mut out = results[i].lock().unwrap_or_else(|e| e.into_inner());
        SCRATCH.with_borrow_mut(|scratch| {
            #[cfg(target_arch = "x86_64")]
            if use_avx2 {
                // SAFETY: Isa other than Scalar is only chosen when AVX2+FMA are available.
                unsafe { tile_avx2(kv, g, &spans[it.si], it, q, &mut out, scratch) };
                return;
            }
            let _ = use_avx2;
            tile::<E, false>(kv, g, &spans[it.si], it, q, &mut out, scratch);
        })
    });
    let results: Vec<Vec<f32>> = results.into_iter().map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner())).collect();
    let mut out = vec![0.0f32; rows * nh * hd];
    let mut i = 0;
    while i < items.len() {
        let it = items[i];
        // A tile's chunk items are consecutive (chunk order).
        let group = if !it.split { 1 } else { items[i..].iter().take_while(|o| (o.si, o.h0, o.t0) == (it.si, it.h0, it.t0)).count() };
        let w = it.heads * hd;
        for t in 0..it.n {
            let dst = (spans[it.si].row + it.t0 + t) * nh * hd + it.h0 * hd;
            let o = &mut out[dst..dst + w];
            if !it.split {
                o.copy_from_slice(&results[i][t * w..(t + 1) * w]);
            } else {
                merge_chunks(&results[i..i + group], it.n, it.heads, hd, t, o);
            }
        }
        i += group;
    }
    out
}

/// The key chunks ([`KEY_CHUNK`]) the queries `t0..t0+n` of span `s` look into: from the first
/// query's first key to the last query's position.
fn key_chunks(g: &Geometry, s: &Span, t0: usize, n: usize) -> std::ops::Range<usize> {
    window_start(g, s.pos + t0) / KEY_CHUNK..(s.pos + t0 + n - 1) / KEY_CHUNK + 1
}

/// The first key position a query at `p` sees (its sliding window's start, else 0).
fn window_start(g: &Geometry, p: usize) -> usize {
    g.sliding_window.map_or(0, |w| (p + 1).saturating_sub(w))
}

/// Query `t`'s output (`o`: `[heads, head_dim]`) from its chunk items' partial results (each
/// `[n, heads, head_dim]` unnormalized weighted sums, then `[n, heads]` (max, sum)), in chunk
/// order: the sums rescaled to the largest max and added, then divided by the total. A chunk
/// without keys for this query (max -inf) adds nothing; one chunk gives the unsplit result
/// (its factor `exp(0)` is exactly 1).
fn merge_chunks(parts: &[Vec<f32>], n: usize, heads: usize, hd: usize, t: usize, o: &mut [f32]) {
    let stats = |p: &Vec<f32>, h: usize| {
        let at = n * heads * hd + 2 * (t * heads + h);
        (p[at], p[at + 1])
    };
    for (h, o) in o.chunks_exact_mut(hd).enumerate() {
        let top = parts.iter().map(|p| stats(p, h).0).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        o.fill(0.0);
        for p in parts {
            let (max, s) = stats(p, h);
            if max == f32::NEG_INFINITY {
                continue;
            }
            let f = math::exp8([max - top; LANES])[0];
            sum += s * f;
            let a = &p[(t * heads + h) * hd..][..hd];
            for (o, &a) in o.iter_mut().zip(a) {
                *o += a * f;
            }
        }
        let inv = 1.0 / sum;
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<E: Elem>(kv: &Cache<E>, g: &Geometry, s: &Span, it: &Item, q: &[f32], out: &mut [f32], scratch: &mut Scratch) {
    tile::<E, true>(kv, g, s, it, q, out, scratch)
}

/// Attention of work item `it` (`out`: `[it.n, it.heads, head_dim]`). Common head sizes get a
/// version with the head size as a constant (`HD`; 0: read from `g`); the arithmetic of a
/// (query, key) pair is the same in all of them, and so is each head's, whichever heads share
/// its item.
#[inline(always)]
fn tile<E: Elem, const SIMD: bool>(kv: &Cache<E>, g: &Geometry, s: &Span, it: &Item, q: &[f32], out: &mut [f32], scratch: &mut Scratch) {
    match g.head_dim {
        64 => tile_hd::<E, SIMD, 64>(kv, g, s, it, q, out, scratch),
        128 => tile_hd::<E, SIMD, 128>(kv, g, s, it, q, out, scratch),
        _ => tile_hd::<E, SIMD, 0>(kv, g, s, it, q, out, scratch),
    }
}

/// A run of keys that lies in one block: KV head's part of the block starts at `base` (see
/// [`base`]), the run is its slots `slot0..slot0+slots`.
#[derive(Debug, Clone, Copy)]
struct Run {
    base: usize,
    slot0: usize,
    slots: usize,
}

/// The [`Run`]s of keys `j..end` of one KV head. An iterator rather than a callback: a closure
/// would be compiled without the caller's AVX2 and not inlined.
#[derive(Clone)]
struct Runs<'a> {
    g: &'a Geometry,
    blocks: &'a [u32],
    kvh: usize,
    j: usize,
    end: usize,
}

impl Iterator for Runs<'_> {
    type Item = Run;

    #[inline(always)]
    fn next(&mut self) -> Option<Run> {
        if self.j >= self.end {
            return None;
        }
        let bs = self.g.block_size;
        let (b, slot0) = (self.blocks[self.j / bs], self.j % bs);
        let slots = (bs - slot0).min(self.end - self.j);
        self.j += slots;
        Some(Run { base: base(self.g, b, self.kvh), slot0, slots })
    }
}

/// Where query `t` of item `it` looks: its keys `first..=p` of its KV head, within the item's
/// key chunk when split (as [`Runs`]), and their count (0 when the chunk is past `p`).
#[inline(always)]
fn keys_of<'a>(g: &'a Geometry, s: &'a Span, it: &Item, t: usize) -> (Runs<'a>, usize) {
    let kvh = it.h0 / (g.n_heads / g.n_kv_heads);
    let p = s.pos + t;
    let (mut first, mut end) = (window_start(g, p), p + 1);
    if it.split {
        first = first.max(it.c * KEY_CHUNK);
        end = end.min((it.c + 1) * KEY_CHUNK);
    }
    let end = end.max(first);
    (Runs { g, blocks: s.blocks, kvh, j: first, end }, end - first)
}

#[inline(always)]
fn tile_hd<E: Elem, const SIMD: bool, const HD: usize>(kv: &Cache<E>, g: &Geometry, s: &Span, it: &Item, q: &[f32], out: &mut [f32], scratch: &mut Scratch) {
    let (nh, bs) = (g.n_heads, g.block_size);
    let hd = if HD == 0 { g.head_dim } else { HD };
    let scale = 1.0 / (hd as f32).sqrt();
    let Scratch { scores, acc, sums, maxes } = scratch;
    let (out, stats) = out.split_at_mut(it.n * it.heads * hd);
    for (i, o) in out.chunks_exact_mut(it.heads * hd).enumerate() {
        let t = it.t0 + i;
        let (runs, n_keys) = keys_of(g, s, it, t);
        let qrow = &q[(s.row + t) * nh * hd + it.h0 * hd..][..it.heads * hd];
        scores.clear();
        scores.resize(it.heads * n_keys, 0.0);
        let mut j = 0;
        let mut ahead = runs.clone().skip(1);
        for r in runs.clone() {
            if let Some(n) = ahead.next() {
                prefetch(&kv.k[n.base..n.base + hd * bs]);
                prefetch(&kv.v[n.base + n.slot0 * hd..][..n.slots * hd]);
            }
            let kt = &kv.k[r.base..r.base + hd * bs];
            // Up to MAX_FUSED heads at a time: each key converted once for all of them.
            let mut qs = qrow.chunks_exact(hd);
            let mut outs = scores.chunks_exact_mut(n_keys).map(|sc| &mut sc[j..j + r.slots]);
            let mut left = it.heads;
            while left > 0 {
                let take = left.min(MAX_FUSED);
                left -= take;
                match take {
                    3 => key_scores::<E, SIMD, 3>(heads(&mut qs), kt, bs, r.slot0, heads(&mut outs), scale),
                    2 => key_scores::<E, SIMD, 2>(heads(&mut qs), kt, bs, r.slot0, heads(&mut outs), scale),
                    _ => key_scores::<E, SIMD, 1>(heads(&mut qs), kt, bs, r.slot0, heads(&mut outs), scale),
                }
            }
            j += r.slots;
        }
        sums.clear();
        maxes.clear();
        for h in 0..it.heads {
            let (max, sum) = softmax_unnormalized(&mut scores[h * n_keys..(h + 1) * n_keys]);
            maxes.push(max);
            sums.push(sum);
        }
        acc.clear();
        acc.resize(it.heads * hd, 0.0);
        let mut j = 0;
        for r in runs {
            let vals = &kv.v[r.base + r.slot0 * hd..][..r.slots * hd];
            let mut accs = acc.chunks_exact_mut(hd);
            let mut ws = scores.chunks_exact(n_keys).map(|sc| &sc[j..j + r.slots]);
            let mut left = it.heads;
            while left > 0 {
                let take = left.min(MAX_FUSED);
                left -= take;
                match take {
                    3 => accumulate::<E, SIMD, HD, 3>(heads(&mut accs), vals, heads(&mut ws)),
                    2 => accumulate::<E, SIMD, HD, 2>(heads(&mut accs), vals, heads(&mut ws)),
                    _ => accumulate::<E, SIMD, HD, 1>(heads(&mut accs), vals, heads(&mut ws)),
                }
            }
            j += r.slots;
        }
        if it.split {
            // A chunk's part: the unnormalized sums and each head's (max, sum), merged later.
            o.copy_from_slice(acc);
            for (h, st) in stats[2 * i * it.heads..][..2 * it.heads].chunks_exact_mut(2).enumerate() {
                st.copy_from_slice(&[maxes[h], sums[h]]);
            }
            continue;
        }
        for ((o, a), &sum) in o.chunks_exact_mut(hd).zip(acc.chunks_exact(hd)).zip(sums.iter()) {
            let inv = 1.0 / sum;
            for (o, a) in o.iter_mut().zip(a) {
                *o = a * inv;
            }
        }
    }
}

/// Asks the CPU to bring `x` into L1 (a hint: the blocks of a sequence are scattered, so the
/// hardware prefetcher starts cold on each).
#[inline(always)]
fn prefetch<E>(x: &[E]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(64 / std::mem::size_of::<E>().max(1)) {
        // SAFETY: a prefetch never faults; the address is inside `x`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr() as *const i8) };
    }
    let _ = x;
}

/// Rotates the first `2*half` dims of every head of `x` (`[rows, heads*head_dim]`) by the angle
/// tables (`[positions, half]`) at each row's position.
pub(crate) fn rope(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    style: RopeStyle,
) {
    let half = head_dim / 2;
    // The style matched outside the loops, so that each inner loop is a plain vector loop.
    for (row, &p) in x.chunks_exact_mut(heads * head_dim).zip(positions) {
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Interleaved => {
                    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(c).zip(s) {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x0 * s + x1 * c;
                    }
                }
                RopeStyle::Neox => {
                    let (a, b) = head.split_at_mut(half);
                    for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(c).zip(s) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * c - x1 * s;
                        *b = x0 * s + x1 * c;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
