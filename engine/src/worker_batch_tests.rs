//! Tests of continuous batching over the fake paged model: batched output equals unbatched
//! output, decodes and prefill chunks share steps within the token budget, preemption under a
//! full KV cache, and a client that stops reading holding up nobody.

use super::*;

/// Submits `prompts` (with `max_tokens` each) `gap` apart and returns their texts in order.
fn run_all(s: &Scheduler, prompts: &[(&[u32], usize)], gap: Duration) -> Vec<String> {
    let rxs: Vec<_> = prompts
        .iter()
        .map(|(p, n)| {
            let rx = s.submit(req(p, *n)).unwrap();
            std::thread::sleep(gap);
            rx
        })
        .collect();
    rxs.into_iter().map(|rx| collect(rx).unwrap().text()).collect()
}

const PROMPTS: &[(&[u32], usize)] = &[
    (&[1, 2, 3], 12),
    (&[2, 2, 2, 2, 2, 2, 2, 3, 1], 9),
    (&[3], 15),
    (&[1, 1, 2, 3, 3, 2, 1, 9, 9, 8, 8, 2, 1], 7),
    (&[4, 4], 11),
];

#[test]
fn batched_greedy_output_equals_unbatched_for_mixed_lengths_and_arrivals() {
    let alone: Vec<String> = PROMPTS
        .iter()
        .map(|(p, n)| {
            let (s, _) = start(Setup { max_seqs: 1, ..Setup::default() });
            run(&s, req(p, *n)).text()
        })
        .collect();
    for gap_ms in [0, 1, 3] {
        let delay = Duration::from_millis(1);
        let (s, log) = start(Setup { delay, max_batch_tokens: 8, ..Setup::default() });
        let texts = run_all(&s, PROMPTS, Duration::from_millis(gap_ms));
        assert_eq!(texts, alone, "arrival gap {gap_ms} ms");
        let steps = log.lock().unwrap().steps.clone();
        assert!(steps.iter().any(|st| st.len() >= 3), "never batched: {steps:?}");
        assert!(steps.iter().all(|st| st.iter().map(|(n, _)| n).sum::<usize>() <= 8), "{steps:?}");
    }
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_beside_running_decodes() {
    let delay = Duration::from_millis(2);
    let (s, log) = start(Setup { delay, max_batch_tokens: 6, ..Setup::default() });
    let mut first = s.submit(req(&[1], 30)).unwrap();
    assert!(matches!(first.blocking_recv(), Some(GenEvent::Delta { .. })));
    let long: Vec<u32> = (0..20).map(|i| 1 + i % 4).collect();
    let second = collect(s.submit(req(&long, 2)).unwrap()).unwrap();
    assert_eq!(second.usage.completion_tokens, 2);
    let steps = log.lock().unwrap().steps.clone();
    // A step holds one decode token of the first request and a 5-token chunk of the prompt.
    assert!(
        steps.iter().any(|st| st.len() == 2 && st[0].0 == 1 && st[1].0 == 5),
        "no mixed step: {steps:?}"
    );
    drop(first);
}

#[test]
fn a_full_kv_cache_preempts_the_newest_and_recomputes_it_with_the_same_output() {
    // 8 blocks of 2 = exactly one context of 16: two sequences that each grow to 14 tokens
    // can't both fit, so one is preempted and finishes later.
    let setup = || Setup { ctx: 16, kv_blocks: Some(8), delay: Duration::from_millis(1), ..Setup::default() };
    let prompts: &[(&[u32], usize)] = &[(&[1, 2, 3, 1], 10), (&[2, 3, 1, 1], 10)];
    let alone: Vec<String> = prompts
        .iter()
        .map(|(p, n)| run(&start(setup()).0, req(p, *n)).text())
        .collect();
    let (s, log) = start(setup());
    assert_eq!(run_all(&s, prompts, Duration::ZERO), alone);
    let calls = log.lock().unwrap().calls.clone();
    // Without preemption each computes 4 + 9 tokens; a recomputation adds some.
    let computed: usize = calls.iter().map(|c| c.0).sum();
    assert!(computed > 26, "expected a preemption and a recompute: {calls:?}");
}

#[test]
fn a_client_that_stops_reading_holds_up_nobody() {
    let (s, _) = start(Setup { rule: Rule::Cycle(&[1]), ctx: 1024, ..Setup::default() });
    let stalled = s.submit(req(&[8], 900)).unwrap(); // never read: fills its channel, then waits
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert_eq!(run(&s, req(&[8], 5)).text(), "aaaaa");
    assert!(t.elapsed() < Duration::from_secs(2));
    // Reading it later gets everything, in order.
    let o = collect(stalled).unwrap();
    assert_eq!(o.usage.completion_tokens, 900);
    assert_eq!(o.text(), "a".repeat(900));
}

#[test]
fn cached_prefix_survives_other_traffic_until_evicted() {
    // 12 blocks of 2; one context is 8 blocks.
    let (s, log) = start(Setup { ctx: 16, kv_blocks: Some(12), ..Setup::default() });
    let system: Vec<u32> = vec![1, 2, 3, 4, 1, 2, 3, 4, 9];
    run(&s, req(&system, 1));
    // Unrelated traffic that fits beside the cached blocks.
    run(&s, req(&[2, 2, 2, 2], 2));
    let n = log.lock().unwrap().calls.len();
    run(&s, req(&system, 1));
    assert_eq!(log.lock().unwrap().calls[n], (1, 8), "the 4 cached blocks are adopted");
    // Traffic that needs more blocks than are free evicts the least recently used ones: the
    // first long prompt takes the never-used blocks and the older [2, 2] ones, the second the
    // system prompt's.
    run(&s, req(&[3; 15], 1));
    run(&s, req(&[4; 15], 1));
    let n = log.lock().unwrap().calls.len();
    run(&s, req(&system, 1));
    assert_eq!(log.lock().unwrap().calls[n], (9, 0), "evicted: computed again");
}
