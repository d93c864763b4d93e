//! The real engine's queue: a dropped receiver cancels its generation and frees the worker, and
//! `QueueFull` comes back once `max_queue` requests wait for a place in the batch.

mod generate_common;

use std::time::Instant;

use ai_sandbox_engine::{EngineError, FinishReason, GenEvent};
use generate_common::*;

#[test]
fn cancellation_frees_the_worker_and_the_queue_is_bounded() {
    // One sequence at a time, so a second request waits in the queue.
    let e = load_with(1, 1);
    let prompt = chat(&e, "Tell me a very long story about dragons.");
    let long = || request(prompt.clone(), no_eos(&e, greedy()), 1000);

    // Measure the time per token of a running request, then drop it mid-generation.
    let mut running = e.submit(long()).unwrap();
    let mut deltas = 0;
    let mut t0 = None;
    while deltas < 6 {
        match running.blocking_recv() {
            Some(GenEvent::Delta { .. }) => deltas += 1,
            other => panic!("expected a delta, got {other:?}"),
        }
        if deltas == 1 {
            t0 = Some(Instant::now());
        }
    }
    let per_token = t0.unwrap().elapsed() / 5;

    // While it runs: one request may wait, the next is refused.
    let waiting = e.submit(request(prompt.clone(), greedy(), 1)).unwrap();
    assert_eq!(e.queue_len(), 1);
    match e.submit(request(prompt.clone(), greedy(), 1)) {
        Err(EngineError::QueueFull(1)) => {}
        other => panic!("expected QueueFull(1), got {:?}", other.map(|_| ())),
    }
    // A waiting request whose receiver is dropped leaves the queue.
    drop(waiting);
    assert_eq!(e.queue_len(), 0);

    let started = Instant::now();
    drop(running);
    let o = run(&e, request(prompt.clone(), no_eos(&e, greedy()), 3));
    let took = started.elapsed();
    assert_eq!(o.finish, FinishReason::Length);
    assert_eq!(o.usage.completion_tokens, 3);
    // Without cancellation the worker would first finish ~990 more tokens of the long request.
    assert!(
        took < per_token * 200,
        "took {took:?} at {per_token:?} per token: the cancelled request kept running"
    );
}
