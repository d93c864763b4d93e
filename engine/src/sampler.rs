//! Token sampling: turns one step's logits into the next token id. Owns the order in which
//! logit_bias, penalties, temperature and the top_k / top_p / min_p filters apply, the seeded
//! random generator, and the log-softmax used for reported logprobs.
//!
//! Order (HF-like): `logit_bias` (a bias of -100 or less is a hard ban) -> repetition penalty
//! over the last [`REPEAT_WINDOW`] tokens of prompt + output -> frequency/presence penalties over
//! the generated tokens -> temperature 0: argmax (ties to the lowest id) | otherwise: divide by
//! temperature -> top_k -> softmax -> top_p -> min_p -> draw.
//! Reported logprobs are the log-softmax of the model logits after `logit_bias` only (no
//! penalties, no temperature, no filters), so they describe the model, not the sampler.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{EngineError, SamplingParams};

/// How many of the most recent tokens (prompt + generated) `repetition_penalty` looks at
/// (llama.cpp's `repeat_last_n` default).
pub const REPEAT_WINDOW: usize = 64;

/// A logit_bias at or below this is a hard ban (the logit becomes -inf), as OpenAI documents
/// -100 to "result in a ban".
const BAN_BIAS: f32 = -100.0;

/// Samples tokens for one request. Holds the request's parameters and its random generator.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// Checks the parameters against the model's vocabulary size and seeds the generator
    /// (`seed: None` draws a seed from the OS).
    pub fn new(params: SamplingParams, vocab_size: usize) -> Result<Sampler, EngineError> {
        validate(&params, vocab_size)?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Sampler { params, rng })
    }

    /// Adds `logit_bias` to `logits` in place (a bias <= -100 sets the logit to -inf).
    pub fn apply_bias(&self, logits: &mut [f32]) {
        for (&id, &bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if bias <= BAN_BIAS { f32::NEG_INFINITY } else { *l + bias };
            }
        }
    }

    /// Whether [`Sampler::sample`] reduces to the argmax of the model's logits (greedy, no
    /// logit_bias, no penalties): then a device may choose the token itself.
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        p.temperature <= 0.0
            && p.logit_bias.is_empty()
            && p.frequency_penalty == 0.0
            && p.presence_penalty == 0.0
            && p.repetition_penalty == 1.0
    }

    /// Picks the next token from logits that already went through [`Sampler::apply_bias`].
    /// `prompt` and `generated` are the request's tokens so far (for the penalties).
    /// Modifies `logits`.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        prompt: &[u32],
        generated: &[u32],
    ) -> Result<u32, EngineError> {
        if logits.is_empty() {
            return Err(EngineError::Internal("the model returned no logits".into()));
        }
        // The penalties neither make nor unmake a NaN (finite factors, infinite logits left
        // alone), so one scan after them answers both checks and gives the greedy token's value.
        self.apply_penalties(logits, prompt, generated);
        let (nan, max) = scan(logits);
        if nan {
            return Err(EngineError::Internal("the model produced NaN logits".into()));
        }
        if max == f32::NEG_INFINITY {
            return Err(EngineError::invalid(
                "logit_bias bans every token; nothing can be sampled",
                Some("logit_bias"),
            ));
        }
        let p = &self.params;
        if p.temperature <= 0.0 {
            return Ok(first_equal(logits, max));
        }
        let inv_t = 1.0 / p.temperature;
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l * inv_t))
            .collect();
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cands.truncate(p.top_k);
        }
        // Softmax in place: the f32 becomes a probability.
        softmax_in_place(&mut cands);
        if p.top_p < 1.0 {
            cands.sort_unstable_by(by_logit_desc);
            let mut cum = 0.0f32;
            let mut keep = cands.len();
            for (i, (_, prob)) in cands.iter().enumerate() {
                cum += prob;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let max = cands.iter().map(|c| c.1).fold(0.0f32, f32::max);
            let threshold = max * p.min_p;
            cands.retain(|c| c.1 >= threshold);
        }
        let total: f32 = cands.iter().map(|c| c.1).sum();
        if cands.is_empty() || total.is_nan() || total <= 0.0 || total.is_infinite() {
            return Ok(argmax(logits));
        }
        let mut target = self.rng.random::<f32>() * total;
        for &(id, prob) in &cands {
            if target < prob {
                return Ok(id);
            }
            target -= prob;
        }
        // Rounding left a sliver past the last candidate: it belongs to the last one.
        Ok(cands[cands.len() - 1].0)
    }

    fn apply_penalties(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let total = prompt.len() + generated.len();
            let skip = total.saturating_sub(REPEAT_WINDOW);
            let mut seen: Vec<u32> = prompt.iter().chain(generated).skip(skip).copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &id in generated {
                *counts.entry(id).or_default() += 1;
            }
            for (id, n) in counts {
                // An infinite logit stays as it is: -inf minus a penalty that overflowed to -inf
                // would be a NaN (`sample` counts on the penalties making none).
                if let Some(l) = logits.get_mut(id as usize).filter(|l| l.is_finite()) {
                    *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
    }
}

fn validate(p: &SamplingParams, vocab_size: usize) -> Result<(), EngineError> {
    let bad = |msg: &str, param: &str| Err(EngineError::invalid(msg, Some(param)));
    if !p.temperature.is_finite() || p.temperature < 0.0 {
        return bad("temperature must be a finite number >= 0", "temperature");
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return bad("top_p must be > 0 and <= 1", "top_p");
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return bad("min_p must be between 0 and 1", "min_p");
    }
    if !p.frequency_penalty.is_finite() {
        return bad("frequency_penalty must be a finite number", "frequency_penalty");
    }
    if !p.presence_penalty.is_finite() {
        return bad("presence_penalty must be a finite number", "presence_penalty");
    }
    if !p.repetition_penalty.is_finite() || p.repetition_penalty <= 0.0 {
        return bad("repetition_penalty must be a finite number > 0", "repetition_penalty");
    }
    for (&id, &bias) in &p.logit_bias {
        if id as usize >= vocab_size {
            return Err(EngineError::invalid(
                format!("logit_bias names token {id}, but the vocabulary has {vocab_size} tokens"),
                Some("logit_bias"),
            ));
        }
        if !bias.is_finite() {
            return bad("logit_bias values must be finite numbers", "logit_bias");
        }
    }
    Ok(())
}

/// Descending by value; ties broken by ascending id so every order is total and deterministic.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the largest logit, the lowest index on ties (NaNs are never picked; 0 when there is
/// nothing else). `logits` must not be empty.
pub fn argmax(logits: &[f32]) -> u32 {
    first_equal(logits, scan(logits).1)
}

/// Whether `x` holds a NaN, and its largest other value (-inf for none): lane by lane, so that
/// it compiles to vector compares and maxima (a vocabulary of 50-150k logits per token).
fn scan(x: &[f32]) -> (bool, f32) {
    const W: usize = 16;
    let mut max = [f32::NEG_INFINITY; W];
    let mut nan = [false; W];
    let mut chunks = x.chunks_exact(W);
    for c in &mut chunks {
        for l in 0..W {
            nan[l] |= c[l].is_nan();
            max[l] = if c[l] > max[l] { c[l] } else { max[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        nan[l] |= v.is_nan();
        max[l] = if v > max[l] { v } else { max[l] };
    }
    (nan.iter().any(|&n| n), max.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m }))
}

/// The first index whose value equals `v` (0 if none).
fn first_equal(x: &[f32], v: f32) -> u32 {
    x.iter().position(|&l| l == v).unwrap_or(0) as u32
}

fn softmax_in_place(cands: &mut [(u32, f32)]) {
    let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for c in cands.iter_mut() {
        c.1 = (c.1 - max).exp();
        sum += c.1;
    }
    if sum > 0.0 {
        for c in cands.iter_mut() {
            c.1 /= sum;
        }
    }
}

/// Log-softmax of `logits` (non-finite entries stay -inf).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![f32::NEG_INFINITY; logits.len()];
    }
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| ((l - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32;
    logits.iter().map(|&l| if l.is_finite() { l - max - log_sum } else { f32::NEG_INFINITY }).collect()
}

/// The `n` most likely tokens of a log-softmax, best first (ties: lowest id first);
/// tokens with logprob -inf (banned) are never listed.
pub fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &lp) in logprobs.iter().enumerate() {
        if !lp.is_finite() || (best.len() == n && lp <= best[n - 1].1) {
            continue;
        }
        let at = best.partition_point(|b| b.1 >= lp);
        best.insert(at, (i as u32, lp));
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams { seed: Some(7), ..SamplingParams::default() }
    }

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p, 8).expect("valid params")
    }

    /// Draws `n` samples and returns how often each id came up.
    fn histogram(p: SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = sampler(p);
        let mut h = vec![0; logits.len()];
        for _ in 0..n {
            let mut l = logits.to_vec();
            s.apply_bias(&mut l);
            h[s.sample(&mut l, &[], &[]).expect("sample") as usize] += 1;
        }
        h
    }

    #[test]
    fn huge_penalties_on_banned_tokens_make_no_nan() {
        // A banned (-inf) token that was generated, and a frequency penalty whose product
        // overflows: the logit stays -inf instead of -inf - (-inf).
        let mut s = sampler(SamplingParams { frequency_penalty: -3e38, temperature: 0.0, ..params() });
        let mut logits = vec![f32::NEG_INFINITY, 1.0, 0.5];
        assert_eq!(s.sample(&mut logits, &[], &[0, 0]).unwrap(), 1);
        assert_eq!(logits[0], f32::NEG_INFINITY);
    }

    #[test]
    fn argmax_equals_the_plain_loop() {
        // The first index of the largest value, over lengths around the 16-wide lanes, with
        // ties, -inf, -0.0 against 0.0, and a NaN the plain loop never picks.
        let plain = |x: &[f32]| {
            let mut best = 0;
            for (i, &l) in x.iter().enumerate() {
                if l > x[best] || x[best].is_nan() && !l.is_nan() {
                    best = i;
                }
            }
            best as u32
        };
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for n in [1, 2, 15, 16, 17, 33, 100, 49152] {
            for _ in 0..20 {
                let x: Vec<f32> = (0..n)
                    .map(|_| match next() % 10 {
                        0 => f32::NEG_INFINITY,
                        1 => -0.0,
                        2 => 0.0,
                        3 => f32::NAN,
                        k => (next() % 7) as f32 - k as f32,
                    })
                    .collect();
                assert_eq!(argmax(&x), plain(&x), "{x:?}");
            }
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 5]), 0);
        assert_eq!(argmax(&[f32::NAN, 1.0, 1.0]), 1);
    }

    #[test]
    fn greedy_takes_argmax_with_ties_to_lowest_id() {
        let mut s = sampler(SamplingParams { temperature: 0.0, ..params() });
        assert_eq!(s.sample(&mut [0.1, 2.0, 0.5, 2.0], &[], &[]).unwrap(), 1);
        assert_eq!(s.sample(&mut [3.0, 3.0], &[], &[]).unwrap(), 0);
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let logits = [1.0, 3.0, 2.9, 2.8, 0.0, 0.0, 0.0, 0.0];
        let h = histogram(SamplingParams { top_k: 2, ..params() }, &logits, 2000);
        assert_eq!(h[0] + h[3] + h[4] + h[5] + h[6] + h[7], 0, "{h:?}");
        assert!(h[1] > 500 && h[2] > 500, "{h:?}");
        let h = histogram(SamplingParams { top_k: 1, ..params() }, &logits, 200);
        assert_eq!(h[1], 200);
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probabilities: 0.5, 0.3, 0.15, 0.05
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let h = histogram(SamplingParams { top_p: 0.75, ..params() }, &logits, 3000);
        assert_eq!(h[2] + h[3], 0, "{h:?}");
        assert!(h[0] > 1500 && h[1] > 800, "{h:?}");
        // The nucleus always keeps at least the best token.
        let h = histogram(SamplingParams { top_p: 0.01, ..params() }, &logits, 100);
        assert_eq!(h[0], 100);
    }

    #[test]
    fn min_p_drops_tokens_below_fraction_of_best() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        // threshold 0.5 * 0.4 = 0.2: keeps ids 0 and 1
        let h = histogram(SamplingParams { min_p: 0.4, ..params() }, &logits, 3000);
        assert_eq!(h[2] + h[3], 0, "{h:?}");
        assert!(h[1] > 700, "{h:?}");
    }

    #[test]
    fn temperature_one_follows_the_distribution_and_low_temperature_sharpens() {
        let logits = [0.7f32.ln(), 0.3f32.ln()];
        let h = histogram(params(), &logits, 4000);
        let frac = h[0] as f32 / 4000.0;
        assert!((frac - 0.7).abs() < 0.05, "{frac}");
        let h = histogram(SamplingParams { temperature: 0.1, ..params() }, &logits, 1000);
        assert!(h[0] > 990, "{h:?}");
    }

    #[test]
    fn same_seed_same_draws_different_seed_differs() {
        let logits = [0.0f32; 8];
        let run = |seed| histogram_seq(SamplingParams { seed: Some(seed), ..params() }, &logits, 64);
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    fn histogram_seq(p: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = sampler(p);
        (0..n).map(|_| s.sample(&mut logits.to_vec(), &[], &[]).unwrap()).collect()
    }

    #[test]
    fn logit_bias_bans_and_forces() {
        let logits = [5.0, 1.0, 0.0, 0.0];
        let mut p = SamplingParams { temperature: 0.0, ..params() };
        p.logit_bias.insert(0, -100.0);
        let mut s = Sampler::new(p.clone(), 4).unwrap();
        let mut l = logits.to_vec();
        s.apply_bias(&mut l);
        assert_eq!(l[0], f32::NEG_INFINITY);
        assert_eq!(s.sample(&mut l, &[], &[]).unwrap(), 1);
        // Banned even when sampling at temperature 1 many times.
        let mut p1 = p.clone();
        p1.temperature = 1.0;
        let h = histogram(p1, &[5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 500);
        assert_eq!(h[0], 0);
        p.logit_bias.clear();
        p.logit_bias.insert(3, 100.0);
        let mut s = Sampler::new(p, 4).unwrap();
        let mut l = logits.to_vec();
        s.apply_bias(&mut l);
        assert_eq!(s.sample(&mut l, &[], &[]).unwrap(), 3);
    }

    #[test]
    fn banning_everything_is_an_input_error_not_a_panic() {
        let mut p = SamplingParams { temperature: 0.0, ..params() };
        p.logit_bias.insert(0, -100.0);
        p.logit_bias.insert(1, -100.0);
        let mut s = Sampler::new(p, 2).unwrap();
        let mut l = vec![1.0, 2.0];
        s.apply_bias(&mut l);
        assert!(matches!(s.sample(&mut l, &[], &[]), Err(EngineError::InvalidInput { .. })));
    }

    #[test]
    fn invalid_params_are_rejected() {
        let mut p = params();
        p.logit_bias.insert(8, 1.0);
        assert!(Sampler::new(p, 8).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..params() }, 8).is_err());
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..params() }, 8).is_err());
        assert!(Sampler::new(SamplingParams { temperature: f32::NAN, ..params() }, 8).is_err());
        assert!(Sampler::new(SamplingParams { repetition_penalty: 0.0, ..params() }, 8).is_err());
    }

    #[test]
    fn nan_logits_are_an_error() {
        let mut s = sampler(params());
        assert!(s.sample(&mut [0.0, f32::NAN], &[], &[]).is_err());
    }

    #[test]
    fn frequency_and_presence_penalties_follow_openai_formula() {
        let s = sampler(SamplingParams { frequency_penalty: 0.5, presence_penalty: 0.25, ..params() });
        let mut l = vec![1.0, 1.0, 1.0];
        // token 1 generated twice, token 2 once; prompt tokens don't count.
        s.apply_penalties(&mut l, &[0, 0, 0], &[1, 2, 1]);
        assert_eq!(l, vec![1.0, 1.0 - 2.0 * 0.5 - 0.25, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative_within_window() {
        let s = sampler(SamplingParams { repetition_penalty: 2.0, ..params() });
        let mut l = vec![4.0, -1.0, 4.0, 4.0];
        s.apply_penalties(&mut l, &[0], &[1, 1]);
        assert_eq!(l, vec![2.0, -2.0, 4.0, 4.0]);
        // Tokens older than the window are not penalised.
        let mut prompt = vec![3u32];
        prompt.extend(std::iter::repeat_n(0u32, REPEAT_WINDOW));
        let mut l = vec![4.0, 4.0, 4.0, 4.0];
        s.apply_penalties(&mut l, &prompt, &[]);
        assert_eq!(l, vec![2.0, 4.0, 4.0, 4.0]);
    }

    #[test]
    fn greedy_is_changed_by_penalties() {
        let mut s = sampler(SamplingParams { temperature: 0.0, presence_penalty: 2.0, ..params() });
        assert_eq!(s.sample(&mut [3.0, 2.0], &[], &[0]).unwrap(), 1);
    }

    #[test]
    fn log_softmax_and_top_n() {
        let lp = log_softmax(&[0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln(), f32::NEG_INFINITY]);
        assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
        assert!((lp[1] - 0.25f32.ln()).abs() < 1e-6);
        assert_eq!(lp[3], f32::NEG_INFINITY);
        let top = top_n(&lp, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(top_n(&lp, 10).len(), 3, "banned tokens are never listed");
        assert!(top_n(&lp, 0).is_empty());
    }
}
