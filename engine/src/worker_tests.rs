//! Tests of the generation worker's logic over a fake model and tokenizer (fast, no model file).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::{FinishReason, SamplingParams, Timings, TokenLogprob, Usage};

/// Vocabulary of the fake tokenizer: id -> bytes. 0 is EOS.
const VOCAB: &[&[u8]] = &[b"</s>", b"a", b"b", b"c", b"#", b"\xE2", b"\x98\x83", b"<ctl>", b"x", b"y"];
/// A control token: no output text.
const CONTROL: u32 = 7;
const EOS: u32 = 0;

struct FakeText;

impl TokenText for FakeText {
    fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        VOCAB.get(id as usize).copied()
    }
    fn eos_ids(&self) -> &[u32] {
        &[EOS]
    }
    fn is_control(&self, id: u32) -> bool {
        id == CONTROL
    }
}

/// How the fake model picks its favourite next token from the tokens in its KV cache.
#[derive(Clone, Copy)]
enum Rule {
    /// A function of the whole KV contents (the sum of ids), so a wrong `pos` or a stale
    /// cache entry changes the output.
    SumMod,
    /// Cycles through the given tokens by KV length.
    Cycle(&'static [u32]),
    /// All logits equal (sampling is pure chance).
    Flat,
}

#[derive(Default)]
struct Log {
    /// (number of tokens, pos) of every sequence of every forward call, flattened.
    calls: Vec<(usize, usize)>,
    /// The same, step by step.
    steps: Vec<Vec<(usize, usize)>>,
    /// Steps run through `forward_batch_greedy`.
    greedy_steps: usize,
}

/// A model with a "KV cache" of token ids, paged like the real one: it writes each token at
/// its position through the block table and reads the sequence's history back through it, so
/// a wrong block table, position or stale block changes the output.
struct FakeModel {
    kv: Vec<Option<u32>>,
    block: usize,
    rule: Rule,
    delay: Duration,
    log: Arc<Mutex<Log>>,
    /// Forward fails when asked to process this token.
    fail_on: Option<u32>,
    /// Forward panics when asked to process this token.
    panic_on: Option<u32>,
    /// Claims to sample on a device (`forward_batch_greedy`).
    on_device: bool,
}

impl FakeModel {
    fn slot(&self, blocks: &[u32], p: usize) -> usize {
        blocks[p / self.block] as usize * self.block + p % self.block
    }
}

impl LanguageModel for FakeModel {
    fn forward_batch(&mut self, seqs: &[SeqInput]) -> Result<Vec<Vec<f32>>, EngineError> {
        std::thread::sleep(self.delay);
        let step: Vec<(usize, usize)> = seqs.iter().map(|s| (s.tokens.len(), s.pos)).collect();
        {
            let mut log = self.log.lock().unwrap();
            log.calls.extend(&step);
            log.steps.push(step);
        }
        let all = || seqs.iter().flat_map(|s| s.tokens.iter());
        if all().any(|t| Some(*t) == self.fail_on) {
            return Err(EngineError::Internal("fake failure".into()));
        }
        if all().any(|t| Some(*t) == self.panic_on) {
            panic!("fake panic");
        }
        let mut out = Vec::new();
        for s in seqs {
            for (i, &t) in s.tokens.iter().enumerate() {
                let at = self.slot(s.blocks, s.pos + i);
                self.kv[at] = Some(t);
            }
            if !s.logits {
                continue;
            }
            let end = s.pos + s.tokens.len();
            let history: Vec<u32> = (0..end)
                .map(|p| self.kv[self.slot(s.blocks, p)].expect("read of a position never written"))
                .collect();
            let mut logits = vec![0.0f32; VOCAB.len()];
            let best = match self.rule {
                Rule::SumMod => 1 + history.iter().sum::<u32>() % 4, // one of a b c #
                Rule::Cycle(c) => c[(history.len() - 1) % c.len()],
                Rule::Flat => {
                    out.push(logits);
                    continue;
                }
            };
            logits[best as usize] = 5.0;
            logits[(best as usize + 1) % VOCAB.len()] = 3.0;
            out.push(logits);
        }
        Ok(out)
    }

    fn samples_on_device(&self) -> bool {
        self.on_device
    }

    fn forward_batch_greedy(&mut self, seqs: &[SeqInput]) -> Result<Vec<u32>, EngineError> {
        let logits = self.forward_batch(seqs)?;
        self.log.lock().unwrap().greedy_steps += 1;
        Ok(logits.iter().map(|l| crate::sampler::argmax(l)).collect())
    }
}

struct Setup {
    rule: Rule,
    delay: Duration,
    max_queue: usize,
    ctx: usize,
    fail_on: Option<u32>,
    panic_on: Option<u32>,
    block: usize,
    /// None: two full contexts.
    kv_blocks: Option<usize>,
    max_seqs: usize,
    max_batch_tokens: usize,
    on_device: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            rule: Rule::SumMod,
            delay: Duration::ZERO,
            max_queue: 4,
            ctx: 64,
            fail_on: None,
            panic_on: None,
            block: 2,
            kv_blocks: None,
            max_seqs: 4,
            max_batch_tokens: 64,
            on_device: false,
        }
    }
}

fn start(s: Setup) -> (Scheduler, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let kv_blocks = s.kv_blocks.unwrap_or(2 * s.ctx.div_ceil(s.block));
    let model = FakeModel {
        kv: vec![None; kv_blocks * s.block],
        block: s.block,
        rule: s.rule,
        delay: s.delay,
        log: log.clone(),
        fail_on: s.fail_on,
        panic_on: s.panic_on,
        on_device: s.on_device,
    };
    let limits = Limits {
        vocab_size: VOCAB.len(),
        ctx_size: s.ctx,
        max_queue: s.max_queue,
        block_size: s.block,
        kv_blocks,
        max_seqs: s.max_seqs,
        max_batch_tokens: s.max_batch_tokens,
    };
    let sched = Scheduler::spawn(model, Arc::new(FakeText), None, limits).unwrap();
    (sched, log)
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..SamplingParams::default() }
}

fn req(prompt: &[u32], max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.to_vec(),
        sampling: greedy(),
        stop: Vec::new(),
        max_tokens,
        logprobs: None,
    }
}

/// Everything one request produced.
struct Outcome {
    deltas: Vec<String>,
    logprobs: Vec<TokenLogprob>,
    finish: FinishReason,
    usage: Usage,
    timings: Timings,
}

impl Outcome {
    fn text(&self) -> String {
        self.deltas.concat()
    }
}

fn collect(mut rx: mpsc::Receiver<GenEvent>) -> Result<Outcome, EngineError> {
    let (mut deltas, mut logprobs) = (Vec::new(), Vec::new());
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            GenEvent::Delta { text, logprobs: lp } => {
                deltas.push(text);
                logprobs.extend(lp);
            }
            GenEvent::Done { finish_reason, usage, timings } => {
                assert!(rx.blocking_recv().is_none(), "nothing may follow Done");
                return Ok(Outcome { deltas, logprobs, finish: finish_reason, usage, timings });
            }
            GenEvent::Error(e) => return Err(e),
        }
    }
    panic!("channel closed without Done or Error");
}

fn run(s: &Scheduler, r: GenerateRequest) -> Outcome {
    collect(s.submit(r).unwrap()).unwrap()
}

#[test]
fn greedy_is_deterministic_and_hits_max_tokens() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1, 2, 3]), ..Setup::default() });
    let a = run(&s, req(&[8, 8], 5));
    // Sampled after kv lengths 2,3,4,5,6 -> script indexes 1,2,0,1,2.
    assert_eq!(a.text(), "bcabc");
    assert_eq!(a.finish, FinishReason::Length);
    assert_eq!(a.usage, Usage { prompt_tokens: 2, completion_tokens: 5, cached_tokens: 0 });
    assert_eq!(a.timings.predicted_n, 5);
    let b = run(&s, req(&[8, 8], 5));
    assert_eq!(a.text(), b.text());
}

#[test]
fn eos_stops_and_is_never_shown() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1, 2, EOS]), ..Setup::default() });
    let o = run(&s, req(&[8], 10));
    // kv len 1 -> idx 0 'a', 2 -> 'b', 3 -> EOS
    assert_eq!(o.text(), "ab");
    assert_eq!(o.finish, FinishReason::Stop);
    assert_eq!(o.usage.completion_tokens, 3, "the EOS token counts as generated");
}

#[test]
fn stop_string_cut_exactly_and_never_partially_streamed() {
    // Output would be "ab#a#ba##..." ; stop "##" must cut before the first "##".
    let script: &[u32] = &[1, 2, 4, 1, 4, 2, 1, 4, 4, 3];
    let (s, _) = start(Setup { rule: Rule::Cycle(script), ..Setup::default() });
    let mut r = req(&[9], 20);
    r.stop = vec!["##".into(), "zz".into()];
    let o = run(&s, r);
    assert_eq!(o.finish, FinishReason::Stop);
    assert_eq!(o.text(), "ab#a#ba");
    let mut sent = String::new();
    for d in &o.deltas {
        sent.push_str(d);
        assert!("ab#a#ba".starts_with(&sent), "delta sequence leaked {sent:?}");
    }
    assert!(o.usage.completion_tokens >= 9);
}

#[test]
fn held_stop_prefix_released_at_max_tokens() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1, 4]), ..Setup::default() });
    let mut r = req(&[8], 2);
    r.stop = vec!["#x".into()];
    let o = run(&s, r);
    assert_eq!(o.finish, FinishReason::Length);
    assert_eq!(o.text(), "a#", "the held '#' is released when generation ends");
}

#[test]
fn split_multibyte_character_is_held_until_complete() {
    // Tokens 5 and 6 together are U+2603.
    let (s, _) = start(Setup { rule: Rule::Cycle(&[5, 6, 1]), ..Setup::default() });
    let mut r = req(&[8, 8, 8, 8], 3);
    r.logprobs = Some(2);
    let o = run(&s, r);
    assert_eq!(o.text(), "☃a");
    assert!(o.deltas.iter().all(|d| !d.contains('\u{FFFD}')));
    assert_eq!(o.deltas[0], "", "first token is half a character: empty delta with its logprob");
    assert_eq!(o.logprobs.len(), 3);
    assert_eq!(o.logprobs[0].bytes, vec![0xE2]);
}

#[test]
fn unfinished_character_at_the_end_becomes_replacement() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1, 5]), ..Setup::default() });
    let o = run(&s, req(&[8], 2));
    assert_eq!(o.text(), "a\u{FFFD}");
}

#[test]
fn logprobs_are_log_softmax_of_model_logits() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1]), ..Setup::default() });
    let mut r = req(&[8], 1);
    r.logprobs = Some(2);
    let o = run(&s, r);
    let lp = &o.logprobs[0];
    // logits: 5 for 'a', 3 for 'b', 0 for the 8 others.
    let z = 5f32.exp() + 3f32.exp() + 8.0;
    assert_eq!(lp.token_id, 1);
    assert_eq!(lp.token, "a");
    assert!((lp.logprob - (5.0 - z.ln())).abs() < 1e-5, "{}", lp.logprob);
    assert_eq!(lp.top.iter().map(|t| t.token_id).collect::<Vec<_>>(), vec![1, 2]);
    assert!((lp.top[1].logprob - (3.0 - z.ln())).abs() < 1e-5);
    // Without logprobs none are sent.
    assert!(run(&s, req(&[8], 1)).logprobs.is_empty());
}

#[test]
fn logit_bias_bans_and_forces() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1]), ..Setup::default() });
    let mut r = req(&[8], 3);
    r.sampling.logit_bias = HashMap::from([(1, -100.0)]);
    assert_eq!(run(&s, r.clone()).text(), "bbb", "'a' banned: the runner-up wins");
    r.sampling.logit_bias = HashMap::from([(9, 100.0)]);
    assert_eq!(run(&s, r).text(), "yyy");
}

#[test]
fn same_seed_same_text_different_seed_differs() {
    let (s, _) = start(Setup { rule: Rule::Flat, ..Setup::default() });
    let sampled = |seed| {
        let mut r = req(&[8], 24);
        r.sampling = SamplingParams { temperature: 1.0, seed: Some(seed), ..SamplingParams::default() };
        r.sampling.logit_bias = HashMap::from([(EOS, -100.0)]);
        run(&s, r).text()
    };
    assert_eq!(sampled(11), sampled(11));
    assert_ne!(sampled(11), sampled(12));
}

#[test]
fn prefix_cache_computes_only_the_uncached_suffix_and_matches_a_cold_cache() {
    let (warm, log) = start(Setup::default()); // blocks of 2
    let first = run(&warm, req(&[1, 2, 3, 1, 2], 4));
    let n = log.lock().unwrap().calls.len();
    let second = run(&warm, req(&[1, 2, 3, 2, 2, 2], 4));
    // The full block [1, 2] is shared; [3, 1] is not: prefill starts at position 2.
    assert_eq!(log.lock().unwrap().calls[n], (4, 2));
    assert_eq!(second.timings.prompt_n, 4);
    let (cold, cold_log) = start(Setup::default());
    assert_eq!(run(&cold, req(&[1, 2, 3, 2, 2, 2], 4)).text(), second.text());
    assert_eq!(cold_log.lock().unwrap().calls[0], (6, 0));
    assert_ne!(first.text(), second.text(), "the fake model depends on the whole cache");
    // The same prompt again recomputes only the block holding its last token.
    let n = log.lock().unwrap().calls.len();
    let third = run(&warm, req(&[1, 2, 3, 2, 2, 2], 4));
    assert_eq!(log.lock().unwrap().calls[n], (2, 4));
    assert_eq!(third.text(), second.text());
    assert_eq!(third.timings.prompt_n, 2);
}

#[test]
fn blocks_filled_by_decoding_are_reused_by_a_follow_up() {
    let (s, log) = start(Setup { rule: Rule::Cycle(&[3]), ..Setup::default() });
    // Prompt [1, 2] then 3 generated tokens: [1, 2] [3, 3] get computed, the last 3 does not.
    assert_eq!(run(&s, req(&[1, 2], 3)).text(), "ccc");
    let n = log.lock().unwrap().calls.len();
    // A multi-turn follow-up that contains the reply only computes what is new.
    let o = run(&s, req(&[1, 2, 3, 3, 8], 1));
    assert_eq!(log.lock().unwrap().calls[n], (1, 4));
    assert_eq!(o.timings.prompt_n, 1);
}

#[test]
fn context_full_ends_with_length() {
    let (s, _) = start(Setup { ctx: 6, rule: Rule::Cycle(&[1]), ..Setup::default() });
    let o = run(&s, req(&[8, 8, 8, 8], 100));
    assert_eq!(o.finish, FinishReason::Length);
    // positions 4 and 5 are filled by generated tokens, then one more is sampled from the last logits.
    assert_eq!(o.usage.completion_tokens, 3);
}

#[test]
fn bad_requests_are_rejected_at_submit() {
    let (s, _) = start(Setup { ctx: 4, ..Setup::default() });
    let invalid = |r| matches!(s.submit(r), Err(EngineError::InvalidInput { .. }));
    assert!(invalid(req(&[], 1)));
    assert!(invalid(req(&[99], 1)));
    let mut r = req(&[1], 1);
    r.sampling.logit_bias = HashMap::from([(1000, 1.0)]);
    assert!(invalid(r));
    assert!(matches!(s.submit(req(&[1; 5], 1)), Err(EngineError::ContextLength { .. })));
    // max_tokens 0 finishes at once.
    let o = run(&s, req(&[1], 0));
    assert_eq!((o.finish, o.usage.completion_tokens, o.text()), (FinishReason::Length, 0, String::new()));
}

#[test]
fn cancellation_frees_the_worker() {
    let delay = Duration::from_millis(20);
    let (s, log) = start(Setup { delay, rule: Rule::Cycle(&[1]), ..Setup::default() });
    let mut rx = s.submit(req(&[8], 10_000)).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(GenEvent::Delta { .. })));
    drop(rx);
    let t = Instant::now();
    let o = run(&s, req(&[8], 3));
    assert_eq!(o.text(), "aaa");
    assert!(t.elapsed() < Duration::from_secs(2), "waited {:?}", t.elapsed());
    assert!(log.lock().unwrap().calls.len() < 200, "the cancelled request kept running");
}

#[test]
fn queue_full_and_cancelled_waiters_leave_the_queue() {
    let delay = Duration::from_millis(30);
    let (s, _) =
        start(Setup { delay, max_queue: 1, max_seqs: 1, rule: Rule::Cycle(&[1]), ..Setup::default() });
    let mut running = s.submit(req(&[8], 10_000)).unwrap();
    // Wait until the worker has picked it up.
    assert!(matches!(running.blocking_recv(), Some(GenEvent::Delta { .. })));
    let waiting = s.submit(req(&[8], 1)).unwrap();
    assert_eq!(s.queue_len(), 1);
    assert!(matches!(s.submit(req(&[8], 1)), Err(EngineError::QueueFull(1))));
    drop(waiting);
    assert_eq!(s.queue_len(), 0);
    let next = s.submit(req(&[8], 2)).unwrap();
    drop(running);
    assert_eq!(collect(next).unwrap().text(), "aa");
}

#[test]
fn a_failing_forward_reports_error_and_the_worker_goes_on() {
    let (s, _) = start(Setup { fail_on: Some(3), rule: Rule::Cycle(&[1]), ..Setup::default() });
    assert!(matches!(collect(s.submit(req(&[3], 2)).unwrap()), Err(EngineError::Internal(_))));
    assert_eq!(run(&s, req(&[8], 2)).text(), "aa");
}

#[test]
fn a_panicking_forward_reports_error_and_the_worker_goes_on() {
    let (s, _) = start(Setup { panic_on: Some(3), rule: Rule::Cycle(&[1]), ..Setup::default() });
    match collect(s.submit(req(&[3], 2)).unwrap()) {
        Err(EngineError::Internal(m)) => assert!(m.contains("fake panic"), "{m}"),
        other => panic!("expected an internal error, got {:?}", other.map(|o| o.text())),
    }
    assert_eq!(run(&s, req(&[8], 2)).text(), "aa");
}

#[test]
fn control_tokens_add_no_text_but_keep_their_logprob_text() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1, CONTROL, 2]), ..Setup::default() });
    let mut r = req(&[8], 3);
    r.logprobs = Some(0);
    let o = run(&s, r);
    assert_eq!(o.text(), "ab");
    assert_eq!(o.logprobs.iter().map(|l| l.token.as_str()).collect::<Vec<_>>(), vec!["a", "<ctl>", "b"]);
    assert!(o.logprobs.iter().all(|l| l.top.is_empty()), "top_logprobs 0 lists none");
}

#[test]
fn requests_of_different_lengths_all_complete() {
    let (s, _) =
        start(Setup { delay: Duration::from_millis(5), rule: Rule::Cycle(&[1]), ..Setup::default() });
    let rxs: Vec<_> = (0..3).map(|i| s.submit(req(&[8], i + 1)).unwrap()).collect();
    let texts: Vec<String> = rxs.into_iter().map(|rx| collect(rx).unwrap().text()).collect();
    assert_eq!(texts, vec!["a", "aa", "aaa"]);
}

#[test]
fn dropping_the_scheduler_answers_waiting_requests_with_unavailable() {
    let (s, _) = start(Setup {
        delay: Duration::from_millis(20),
        max_seqs: 1,
        rule: Rule::Cycle(&[1]),
        ..Setup::default()
    });
    let mut running = s.submit(req(&[8], 5)).unwrap();
    assert!(matches!(running.blocking_recv(), Some(GenEvent::Delta { .. })));
    let waiting = s.submit(req(&[8], 5)).unwrap();
    drop(s);
    assert_eq!(collect(running).unwrap().usage.completion_tokens, 5, "the running request finishes");
    assert!(matches!(collect(waiting), Err(EngineError::Unavailable)));
}

#[path = "worker_batch_tests.rs"]
mod batching;

#[test]
fn a_device_picks_greedy_tokens_unless_a_request_needs_the_logits() {
    let (host, _) = start(Setup::default());
    let (dev, log) = start(Setup { on_device: true, ..Setup::default() });
    let plain = run(&host, req(&[3, 1, 2], 6));
    let on_device = run(&dev, req(&[3, 1, 2], 6));
    assert_eq!(on_device.text(), plain.text());
    assert_eq!(on_device.usage, plain.usage);
    let steps = log.lock().unwrap().greedy_steps;
    assert_eq!(steps, 6, "every token of a plain greedy request chosen on the device");

    // Logprobs, a logit_bias or sampling need the logits on the host.
    let mut with_logprobs = req(&[3, 1, 2], 6);
    with_logprobs.logprobs = Some(1);
    let lp = run(&dev, with_logprobs);
    assert_eq!(lp.text(), plain.text());
    assert_eq!(lp.logprobs.len(), 6);
    let mut biased = req(&[3, 1, 2], 3);
    biased.sampling.logit_bias.insert(1, -100.0);
    let b = run(&dev, biased);
    assert!(!b.text().contains('a'), "{:?}", b.text());
    assert_eq!(log.lock().unwrap().greedy_steps, steps, "no device sampling for them");
}
