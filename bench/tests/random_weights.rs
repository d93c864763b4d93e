//! The in-process modes through the real binary on the CPU: `--random-weights tiny` on both
//! placements (the JSON report's fields present, positive and consistent with the tiny shape;
//! a stream count that doesn't fit the KV limit skipped with its reason; the table), and
//! `--kernel-check` on `cpu-tensor`.

use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ai-sandbox-bench"))
        .args(args)
        // The HTTP mode's variables must not leak into these runs.
        .env_remove("AI_SANDBOX_BENCH_KERNEL_CHECK")
        .env_remove("AI_SANDBOX_BENCH_RANDOM_WEIGHTS")
        .output()
        .expect("running ai-sandbox-bench")
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn positive(v: &Value, pointer: &str) -> f64 {
    let x = v
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v:#}"));
    assert!(x > 0.0 && x.is_finite(), "{pointer} = {x}");
    x
}

/// Weight elements of the report's shape: (all of them, those one decode step reads: every
/// matrix and norm, but one row of the embedding table). Untied output, as the presets.
fn weight_elems(r: &Value) -> (f64, f64) {
    let c = &r["config"];
    let n = |k: &str| {
        c[k].as_f64()
            .unwrap_or_else(|| panic!("config.{k} missing: {c}"))
    };
    let (h, f, v) = (n("hidden_size"), n("ffn_size"), n("vocab_size"));
    let (q, kv) = (
        n("n_heads") * n("head_dim"),
        n("n_kv_heads") * n("head_dim"),
    );
    let layers = n("n_layers") * (h * q + 2.0 * h * kv + q * h + 3.0 * h * f + 2.0 * h);
    (layers + h + 2.0 * v * h, layers + h + v * h + h)
}

fn run_tiny(device: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--random-weights",
        "tiny",
        "--device",
        device,
        "--json",
        "--prompt-len",
        "20",
        "--decode-steps",
        "6",
        "--warmup-steps",
        "2",
        "--copy-mb",
        "8",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&stdout_of(&bench(&args))).expect("one JSON object on stdout")
}

fn check_report(r: &Value, placement: &str) {
    assert_eq!(r["shape"], "tiny");
    assert_eq!(r["placement"], placement);
    assert_eq!(r["dtype"], "f32");
    assert_eq!(r["device"], "cpu");
    // f32 weights: 4 bytes each; K and V of every layer and KV head per position.
    let (all, read) = weight_elems(r);
    assert_eq!(r["weight_bytes"].as_f64(), Some(all * 4.0));
    assert_eq!(r["weight_bytes_read_per_step"].as_f64(), Some(read * 4.0));
    let c = &r["config"];
    // ... except the host's KV cache, f16 by default (`--kv-cache-dtype`).
    let kv_elem = if placement == "host" { 2 } else { 4 };
    let kv = 2
        * kv_elem
        * c["n_layers"].as_u64().unwrap()
        * c["n_kv_heads"].as_u64().unwrap()
        * c["head_dim"].as_u64().unwrap();
    assert_eq!(r["kv_bytes_per_token"].as_u64(), Some(kv));
    assert_eq!(r["ctx_size"], 28);
    for p in [
        "/copy_bandwidth/gb_s",
        "/copy_bandwidth/memcpy_gb_s",
        "/copy_bandwidth/kernel_copy_gb_s",
        "/load_s",
    ] {
        positive(r, p);
    }
    let one = &r["single_stream"];
    assert_eq!(one["decode_steps"], 6);
    for p in [
        "/prefill_tok_s",
        "/decode_tok_s",
        "/step/p50_ms",
        "/step/mean_ms",
        "/roofline/fraction",
        "/roofline/achieved_gb_s",
    ] {
        positive(one, p);
    }
    // tok/s and the mean step agree; the roofline fraction is bytes / step / copy bandwidth.
    let tok_s = one["decode_tok_s"].as_f64().unwrap();
    let mean_s = one["step"]["mean_ms"].as_f64().unwrap() / 1e3;
    assert!(
        (tok_s * mean_s - 1.0).abs() < 0.1,
        "{tok_s} tok/s vs mean step {mean_s} s"
    );
    let bytes = one["roofline"]["bytes_per_step"].as_f64().unwrap();
    // Weights plus 20 + 2 + 2.5 + 1 = 25.5 cached positions on average.
    assert!(
        (bytes - (read * 4.0 + 25.5 * kv as f64)).abs() < 1e-6,
        "{bytes}"
    );
    let fraction = one["roofline"]["fraction"].as_f64().unwrap();
    let expect = bytes * tok_s / 1e9 / r["copy_bandwidth"]["gb_s"].as_f64().unwrap();
    assert!(
        (fraction - expect).abs() / expect < 0.1,
        "{fraction} vs {expect}"
    );
}

#[test]
fn random_weights_on_the_device_code_path() {
    let r = run_tiny("cpu-tensor", &["--streams", "1,3"]);
    check_report(&r, "device");
    // 28 positions = 2 blocks per stream, 3 streams at most.
    assert_eq!(r["kv_blocks"], 6);
    let levels = r["streams"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (lv, b) in levels.iter().zip([1, 3]) {
        assert_eq!(lv["streams"], b);
        assert!(lv["skipped"].is_null(), "{lv}");
        let agg = positive(lv, "/aggregate_tok_s");
        let each = positive(lv, "/per_stream_tok_s");
        assert!((agg / each - b as f64).abs() < 1e-9);
        positive(lv, "/prefill_tok_s");
        positive(lv, "/roofline/fraction");
    }
}

#[test]
fn random_weights_on_the_host_kernels_with_a_level_that_does_not_fit() {
    // 1 MiB of KV: far fewer than the 2,000 blocks of 1,000 streams.
    let r = run_tiny("cpu", &["--streams", "2,1000", "--kv-cache-mb", "1"]);
    check_report(&r, "host");
    let cap = (1 << 20) / (16 * r["kv_bytes_per_token"].as_u64().unwrap());
    assert_eq!(r["kv_blocks"].as_u64(), Some(cap));
    let levels = r["streams"].as_array().unwrap();
    positive(&levels[0], "/aggregate_tok_s");
    let why = levels[1]["skipped"].as_str().expect("1000 streams skipped");
    assert!(
        why.contains("needs 2000 KV blocks") && why.contains(&format!("{cap} allocated")),
        "{why}"
    );
    assert!(levels[1]["aggregate_tok_s"].is_null());
}

#[test]
fn random_weights_prints_a_table_without_json() {
    let out = stdout_of(&bench(&[
        "--random-weights",
        "tiny",
        "--device",
        "cpu-tensor",
        "--streams",
        "2",
        "--prompt-len",
        "8",
        "--decode-steps",
        "3",
        "--copy-mb",
        "4",
    ]));
    assert!(
        out.starts_with("random-weights tiny on cpu, f32 (device)"),
        "{out}"
    );
    assert!(out.contains("% of the copy bandwidth"), "{out}");
    let row = out.lines().last().unwrap();
    assert!(
        row.trim_start().starts_with("2 ") && row.ends_with('%'),
        "{out}"
    );
}

#[test]
fn unknown_shapes_and_bad_flags_fail_with_the_reason() {
    let out = bench(&["--random-weights", "gpt-9", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown shape `gpt-9`") && err.contains("mistral-7b"),
        "{err}"
    );
    let out = bench(&[
        "--random-weights",
        "tiny",
        "--device",
        "cpu",
        "--ctx-size",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ctx-size 4"));
    let out = bench(&["--random-weights", "tiny", "--kernel-check"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses both modes at once"
    );
}

#[test]
fn kernel_check_on_cpu_tensor_passes_line_by_line() {
    let out = stdout_of(&bench(&[
        "--kernel-check",
        "--device",
        "cpu-tensor",
        "--dtype",
        "f32",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    let closing = lines.last().unwrap();
    let n: usize = closing
        .strip_prefix("kernel checks: ")
        .and_then(|s| s.strip_suffix(" passed, 0 failed"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("closing line: {out}"));
    assert!(n > 0);
    assert_eq!(lines.len(), n + 1);
    assert!(
        lines[..n].iter().all(|l| l.starts_with("ok    f32 ")),
        "{out}"
    );

    let json: Value = serde_json::from_str(&stdout_of(&bench(&[
        "--kernel-check",
        "--device",
        "cpu-tensor",
        "--dtype",
        "f32",
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["failed"], 0);
    assert_eq!(json["passed"], n);
    assert!(json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true && c["tolerance"].as_f64().unwrap() >= 0.0));
}
