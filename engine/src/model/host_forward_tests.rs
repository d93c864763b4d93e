//! The host forward (`Layer::forward_host`, slices and reused buffers) against the layers'
//! tensor path on the same model: the same logits, bit for bit, step by step, for mixed
//! batches of prefills and decodes (llama: no biases, interleaved RoPE; qwen2: biases, NeoX).

use super::*;

/// Runs `seqs` through the tensor path, then again (over the same KV entries) through the host
/// path; both logits.
fn both(m: &mut Model, seqs: &[SeqInput]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    m.tensor_path = true;
    let tensors = m.forward_batch(seqs).unwrap();
    m.tensor_path = false;
    let host = m.forward_batch(seqs).unwrap();
    (tensors, host)
}

#[test]
fn host_forward_is_the_tensor_path_bit_for_bit() {
    for arch in ["llama", "qwen2"] {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        if arch == "qwen2" {
            cfg.arch = "qwen2".into();
            cfg.rope_style = RopeStyle::Neox;
        } else {
            cfg.rope_style = RopeStyle::Interleaved;
        }
        let mut m = Model::random(cfg, Some(256), 7, &LoadOptions::default()).unwrap();
        let (a, b): (Vec<u32>, Vec<u32>) = ((0..4).collect(), (4..8).collect());
        // Step 1: two prefills of different lengths.
        let first = [
            SeqInput { tokens: &[11, 22, 33, 44, 55], pos: 0, blocks: &a, logits: true },
            SeqInput { tokens: &[66, 77, 88], pos: 0, blocks: &b, logits: true },
        ];
        let (t, h) = both(&mut m, &first);
        assert_eq!(t.len(), 2);
        assert_eq!(t, h, "{arch}: prefills");
        // Then decodes of both, one of them beside a later prefill chunk that asks for no logits.
        for step in 0..20usize {
            let (ta, tb) = ([100 + step as u32], [200 + step as u32; 3]);
            let seqs = [
                SeqInput { tokens: &ta, pos: 5 + step, blocks: &a, logits: true },
                SeqInput { tokens: &tb[..1 + step % 3], pos: 3 + 3 * step, blocks: &b, logits: step % 2 == 0 },
            ];
            // Seq b's position advances by 3 a step whatever it ran: the skipped entries are
            // written by neither path and read by both alike.
            let (t, h) = both(&mut m, &seqs);
            assert_eq!(t.len(), 1 + (step % 2 == 0) as usize);
            assert!(t.iter().flatten().all(|v| v.is_finite()), "{arch}: non-finite logits");
            assert_eq!(t, h, "{arch}: step {step}");
        }
    }
}
