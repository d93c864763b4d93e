//! Paged attention against a dense f64 reference on random tensors, and the bit-for-bit
//! independence of a row from its batch.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Dense causal GQA attention in f64 over a whole sequence's keys/values `[len, kv*hd]`.
fn reference(g: &Geometry, q: &[f32], k: &[f32], v: &[f32], len: usize) -> Vec<f64> {
    let (nh, nkv, hd) = (g.n_heads, g.n_kv_heads, g.head_dim);
    let mut out = Vec::with_capacity(len * nh * hd);
    for t in 0..len {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let first = g.sliding_window.map_or(0, |w| (t + 1).saturating_sub(w));
            // Position j's kv head `kvh` in the `[len, kv*hd]` rows.
            let head = |j: usize| j * nkv * hd + kvh * hd..j * nkv * hd + (kvh + 1) * hd;
            let qr = &q[t * nh * hd + h * hd..][..hd];
            out.extend(crate::model::checks::reference_row(qr, |j| &k[head(j)], |j| &v[head(j)], first..=t));
        }
    }
    out
}

/// Runs `len` tokens of one sequence through the paged path in chunks of `chunk`, with the
/// block table `blocks`; returns every row's output.
#[allow(clippy::too_many_arguments)]
fn paged(dt: KvDtype, g: &Geometry, n_blocks: usize, blocks: &[u32], q: &[f32], k: &[f32], v: &[f32], len: usize, chunk: usize) -> Vec<f32> {
    let (w, kw) = (g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim);
    let mut kv = LayerKv::new(g, n_blocks, dt);
    let mut out = Vec::new();
    for pos in (0..len).step_by(chunk) {
        let n = chunk.min(len - pos);
        let span = Span { row: 0, len: n, pos, blocks };
        kv.write(g, &[span], &k[pos * kw..(pos + n) * kw], &v[pos * kw..(pos + n) * kw]);
        out.extend(attend(&kv, g, &[span], &q[pos * w..(pos + n) * w]));
    }
    out
}

#[test]
fn paged_attention_matches_dense_reference_with_window_gqa_and_scattered_blocks() {
    let mut rng = StdRng::seed_from_u64(7);
    for (window, head_dim) in [(None, 20), (Some(5), 20), (None, 64), (Some(7), 128)] {
        let g = Geometry { n_heads: 6, n_kv_heads: 2, head_dim, block_size: 4, sliding_window: window };
        let len = 23;
        let (w, kw) = (g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim);
        let (q, k, v) = (random(&mut rng, len * w), random(&mut rng, len * kw), random(&mut rng, len * kw));
        let want = reference(&g, &q, &k, &v, len);
        // Blocks out of order, in a pool larger than needed.
        let blocks = [9u32, 2, 7, 0, 5, 11];
        // An f16 cache rounds keys and values to 11 significant bits (values here within 1).
        for (dt, tol) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-3)] {
            for chunk in [1, 3, 23] {
                let got = paged(dt, &g, 12, &blocks, &q, &k, &v, len, chunk);
                let err = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(err < tol, "{dt:?} window {window:?} head_dim {head_dim} chunk {chunk}: max error {err}");
            }
        }
    }
}

#[test]
fn a_row_is_bit_identical_alone_chunked_or_batched() {
    for dt in [KvDtype::F32, KvDtype::F16] {
        row_is_bit_identical_alone_chunked_or_batched(dt);
    }
}

fn row_is_bit_identical_alone_chunked_or_batched(dt: KvDtype) {
    let mut rng = StdRng::seed_from_u64(3);
    let g = Geometry { n_heads: 4, n_kv_heads: 2, head_dim: 64, block_size: 4, sliding_window: None };
    let (w, kw) = (g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim);
    let len = 19;
    let (q, k, v) = (random(&mut rng, len * w), random(&mut rng, len * kw), random(&mut rng, len * kw));
    let blocks_a = [0u32, 1, 2, 3, 4];
    let whole = paged(dt, &g, 16, &blocks_a, &q, &k, &v, len, len);
    let one_by_one = paged(dt, &g, 16, &blocks_a, &q, &k, &v, len, 1);
    assert_eq!(whole, one_by_one, "chunking changed a value");

    // The same sequence in a batch beside another one (other blocks, other rows).
    let blocks_b = [10u32, 11, 12];
    let other = 9;
    let (q2, k2, v2) = (random(&mut rng, other * w), random(&mut rng, other * kw), random(&mut rng, other * kw));
    let mut kv = LayerKv::new(&g, 16, dt);
    let spans = [
        Span { row: 0, len: other, pos: 0, blocks: &blocks_b },
        Span { row: other, len, pos: 0, blocks: &blocks_a },
    ];
    let cat = |a: &[f32], b: &[f32]| [a, b].concat();
    kv.write(&g, &spans, &cat(&k2, &k), &cat(&v2, &v));
    let batched = attend(&kv, &g, &spans, &cat(&q2, &q));
    assert_eq!(&batched[other * w..], &whole[..], "{dt:?}: batching changed a value");
}

#[test]
fn rope_styles_rotate_the_right_pairs() {
    // One head of 4 dims, position 1 with angles (90 degrees, 0).
    let (cos, sin) = (vec![1.0, 1.0, 0.0, 1.0], vec![0.0, 0.0, 1.0, 0.0]);
    let mut x = vec![1.0, 2.0, 3.0, 4.0];
    rope(&mut x, 1, 4, &[1], &cos, &sin, RopeStyle::Interleaved);
    assert_eq!(x, vec![-2.0, 1.0, 3.0, 4.0]);
    let mut x = vec![1.0, 2.0, 3.0, 4.0];
    rope(&mut x, 1, 4, &[1], &cos, &sin, RopeStyle::Neox);
    assert_eq!(x, vec![-3.0, 2.0, 1.0, 4.0]);
}

#[test]
fn fast_exp_is_accurate_over_the_softmax_range() {
    let mut worst = 0.0f64;
    for i in 0..=100_000 {
        let x = -87.0 * i as f32 / 100_000.0;
        let got = exp8([x; LANES])[3] as f64;
        let want = (x as f64).exp();
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 5e-7, "worst relative error {worst}");
    assert_eq!(exp8([0.0; LANES]), [1.0; LANES]);
    // 2^n from the rounding constant's bits: what `n as i32` gave (below -87 too: clamped).
    for i in 0..=20_000 {
        let x = -100.0 * i as f32 / 20_000.0;
        let v = x.max(-87.0);
        let n = (v * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
        let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
        assert_eq!(exp8([x; LANES])[5].to_bits(), {
            let r = (v - n * 0.693_145_75) - n * 1.428_606_8e-6;
            let p = 1.0
                + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
            (p * two_n).to_bits()
        }, "x = {x}");
    }
}

#[test]
fn grouping_query_heads_by_kv_head_changes_no_bit() {
    let mut rng = StdRng::seed_from_u64(11);
    for (head_dim, dt) in [(64, KvDtype::F32), (20, KvDtype::F32), (64, KvDtype::F16)] {
        let g = Geometry { n_heads: 6, n_kv_heads: 2, head_dim, block_size: 4, sliding_window: Some(9) };
        let (w, kw) = (g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim);
        // A prefill chunk of 21 tokens at 0 and a decode at 13 (their keys in other blocks).
        let (a, b) = (21, 14);
        let (blocks_a, blocks_b) = ([3u32, 0, 8, 1, 6, 2], [4u32, 7, 5, 9]);
        let spans = [
            Span { row: 0, len: a, pos: 0, blocks: &blocks_a },
            Span { row: a, len: 1, pos: b - 1, blocks: &blocks_b },
        ];
        let mut kv = LayerKv::new(&g, 10, dt);
        let (k_b, v_b) = (random(&mut rng, b * kw), random(&mut rng, b * kw));
        let prior = [Span { row: 0, len: b - 1, pos: 0, blocks: &blocks_b }];
        kv.write(&g, &prior, &k_b[..(b - 1) * kw], &v_b[..(b - 1) * kw]);
        let (k, v) = (random(&mut rng, (a + 1) * kw), random(&mut rng, (a + 1) * kw));
        kv.write(&g, &spans, &k, &v);
        let q = random(&mut rng, (a + 1) * w);
        let alone = attend_grouped(&kv, &g, &spans, &q, 1);
        let grouped = attend_grouped(&kv, &g, &spans, &q, 3);
        assert_eq!(alone, grouped, "head_dim {head_dim}");
        assert_eq!(attend(&kv, &g, &spans, &q), alone, "head_dim {head_dim}");
    }
}

#[test]
fn vector_lanes_score_like_lone_keys() {
    let mut rng = StdRng::seed_from_u64(5);
    for hd in [64, 20, 3] {
        let bs = 16;
        let qs: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, hd)).collect();
        let kt = random(&mut rng, hd * bs);
        let kt16: Vec<F16> = kt.iter().map(|&x| <F16 as Elem>::from_f32(x)).collect();
        for (slot0, n) in [(0, 16), (0, 1), (3, 9), (7, 2), (9, 7), (15, 1)] {
            let want = |kt: &[_]| -> Vec<Vec<f32>> {
                qs.iter().map(|q| (slot0..slot0 + n).map(|x| score1(q, kt, bs, x) * 0.125).collect()).collect()
            };
            let want16: Vec<Vec<f32>> =
                qs.iter().map(|q| (slot0..slot0 + n).map(|x| score1(q, &kt16, bs, x) * 0.125).collect()).collect();
            // One head alone, and three fused in one pass: each head's scores are score1's.
            let mut got = vec![vec![0.0; n]; 3];
            for (h, g) in got.iter_mut().enumerate() {
                key_scores::<f32, false, 1>([&qs[h]], &kt, bs, slot0, [g], 0.125);
            }
            assert_eq!(got, want(&kt), "hd {hd} slots {slot0}+{n}, one head");
            let [a, b, c] = &mut got[..] else { unreachable!() };
            key_scores::<f32, false, 3>([&qs[0], &qs[1], &qs[2]], &kt, bs, slot0, [a, b, c], 0.125);
            assert_eq!(got, want(&kt), "hd {hd} slots {slot0}+{n}, three heads");
            // f16 keys: widened by `half` or by F16C, the same scores.
            let [a, b, c] = &mut got[..] else { unreachable!() };
            key_scores::<F16, false, 3>([&qs[0], &qs[1], &qs[2]], &kt16, bs, slot0, [a, b, c], 0.125);
            assert_eq!(got, want16, "f16 hd {hd} slots {slot0}+{n}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("fma") {
                let [a, b] = &mut got[..2] else { unreachable!() };
                // SAFETY: the features were just checked.
                unsafe { f16c_scores(&qs, &kt16, bs, slot0, [a, b]) };
                assert_eq!(got, want16, "f16 (F16C) hd {hd} slots {slot0}+{n}");
            }
        }
    }
}

/// Two fused heads' scores with the F16C/FMA build of the loops.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16c_scores(qs: &[Vec<f32>], kt: &[F16], bs: usize, slot0: usize, out: [&mut Vec<f32>; 2]) {
    let [a, b] = out;
    key_scores::<F16, true, 2>([&qs[0], &qs[1]], kt, bs, slot0, [a, b], 0.125);
}

#[test]
fn f16_widening_is_exact_both_ways() {
    // Every finite half, widened by `half` and (where the CPU has it) by F16C, 8 at a time.
    let all: Vec<F16> = (0..=u16::MAX).filter(|h| h.to_f32().is_finite()).collect();
    for c in all.chunks_exact(LANES) {
        let plain = <F16 as Elem>::get8::<false>(c);
        for (h, p) in c.iter().zip(plain) {
            assert_eq!(h.to_f32().to_bits(), p.to_bits());
            assert_eq!(<F16 as Elem>::from_f32(p), *h, "round trip of {p}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            let simd = <F16 as Elem>::get8::<true>(c);
            assert_eq!(simd.map(f32::to_bits), plain.map(f32::to_bits));
        }
    }
}

/// A decode step's attention as the 8-stream benchmark sees it (SmolLM2's shape: 9 heads, 3 KV
/// heads, head size 64, f16 cache; 8 sequences of 100-300 keys in scattered 16-slot blocks),
/// min over repetitions, on 2 threads:
/// `cargo test --release -p ai-sandbox-engine --lib bench_attention -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_attention() {
    let g = Geometry { n_heads: 9, n_kv_heads: 3, head_dim: 64, block_size: 16, sliding_window: None };
    let mut rng = StdRng::seed_from_u64(1);
    let n_blocks = 8 * 20;
    let mut kv = LayerKv::new(&g, n_blocks, KvDtype::F16);
    let mut tables: Vec<Vec<u32>> = (0..8).map(|s| (0..20).map(|b| ((b * 8 + s) * 7 % n_blocks) as u32).collect()).collect();
    tables.iter_mut().for_each(|t| t.dedup());
    let lens: Vec<usize> = (0..8).map(|s| 100 + 25 * s).collect();
    let kw = g.n_kv_heads * g.head_dim;
    for (s, t) in tables.iter().enumerate() {
        let len = lens[s];
        let span = Span { row: 0, len, pos: 0, blocks: t };
        kv.write(&g, &[span], &random(&mut rng, len * kw), &random(&mut rng, len * kw));
    }
    let spans: Vec<Span> = (0..8).map(|s| Span { row: s, len: 1, pos: lens[s] - 1, blocks: &tables[s] }).collect();
    let q = random(&mut rng, 8 * g.n_heads * g.head_dim);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut best = f64::MAX;
    for _ in 0..2000 {
        let t0 = std::time::Instant::now();
        let out = pool.install(|| crate::pool::team(|| attend(&kv, &g, &spans, &q)));
        best = best.min(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    eprintln!("attention, 8 decodes of 100-275 keys, 2 threads: {best:.1} us (min of 2000)");
}

#[test]
fn f16_slice_conversion_equals_per_value() {
    // Ties to even, subnormals, overflow to infinity, infinities, signed zeros.
    let mut rng = StdRng::seed_from_u64(17);
    let mut x = random(&mut rng, 257);
    x.extend([1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 1e-6, -3e-8, 70000.0, -1e9, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]);
    let mut got = vec![0u16; x.len()];
    F16::from_f32_slice(&x, &mut got);
    let want: Vec<u16> = x.iter().map(|&v| F16::from_f32(v)).collect();
    assert_eq!(got, want);
}

#[test]
fn long_contexts_split_into_key_chunks_match_the_reference_and_do_not_depend_on_the_batch() {
    // 1,200 positions: keys in three chunks of KEY_CHUNK; a 20-query span at the end (every query
    // split three ways) and one across the first chunk boundary (a tile whose first queries fit
    // one chunk and whose last ones need two); with and without a window that starts mid-chunk.
    let mut rng = StdRng::seed_from_u64(11);
    for window in [None, Some(700)] {
        let g = Geometry { n_heads: 6, n_kv_heads: 2, head_dim: 64, block_size: 16, sliding_window: window };
        let len = 1200;
        let (w, kw) = (g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim);
        let (q, k, v) = (random(&mut rng, len * w), random(&mut rng, len * kw), random(&mut rng, len * kw));
        // Blocks scattered over a larger pool.
        let blocks: Vec<u32> = (0..len.div_ceil(16) as u32).map(|b| (b * 7) % 80).collect();
        for (dt, tol) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-3)] {
            let mut kv = LayerKv::new(&g, 80, dt);
            kv.write(&g, &[Span { row: 0, len, pos: 0, blocks: &blocks }], &k, &v);
            let want = reference(&g, &q, &k, &v, len);
            for (pos, n) in [(1180, 20), (500, 30)] {
                let span = Span { row: 0, len: n, pos, blocks: &blocks };
                let got = attend(&kv, &g, &[span], &q[pos * w..(pos + n) * w]);
                let err = got.iter().zip(&want[pos * w..]).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(err < tol, "{dt:?} window {window:?} queries {pos}..{}: max error {err}", pos + n);
                // Each query alone, and the span beside a short sequence: the same bits.
                for t in [0, 11, n - 1] {
                    let alone = Span { row: 0, len: 1, pos: pos + t, blocks: &blocks };
                    let one = attend(&kv, &g, &[alone], &q[(pos + t) * w..(pos + t + 1) * w]);
                    assert_eq!(one, got[t * w..(t + 1) * w], "{dt:?} {window:?}: query {} alone", pos + t);
                }
                let short = Span { row: 0, len: 3, pos: 0, blocks: &blocks };
                let span_b = Span { row: 3, ..span };
                let x = [&q[..3 * w], &q[pos * w..(pos + n) * w]].concat();
                let batched = attend(&kv, &g, &[short, span_b], &x);
                assert_eq!(&batched[3 * w..], &got[..], "{dt:?} {window:?}: batched");
            }
        }
    }
}
