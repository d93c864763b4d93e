//! `scripts/gpu-check` dry-run on the CPU (`GPU_CHECK_DEVICE=cpu-tensor`, the tiny shape, no
//! torch): the script's own logic (steps, time boxes, what lands in `$OUT`, the summary, the
//! exit status) before it meets a GPU. A stand-in binary whose kernel checks fail checks the
//! failure path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpu-check-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gpu_check(bin: &Path, out: &Path) -> Output {
    Command::new(root().join("scripts/gpu-check"))
        .arg(bin)
        .current_dir(root())
        .env("OUT", out)
        .env("GPU_CHECK_DEVICE", "cpu-tensor")
        .env("GPU_CHECK_SHAPES", "tiny")
        .env("GPU_CHECK_STREAMS", "1,3")
        .env("GPU_CHECK_PROMPT_LEN", "16")
        .env("GPU_CHECK_DECODE_STEPS", "4")
        // No torch: the reference step must be skipped, not fail the run.
        .env("GPU_CHECK_PYTHON", "/bin/false")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running scripts/gpu-check")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn dry_run_on_the_cpu_checks_benchmarks_and_summarises() {
    let out_dir = scratch("ok");
    let out = gpu_check(Path::new(env!("CARGO_BIN_EXE_ai-sandbox-bench")), &out_dir);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    for dt in ["bf16", "f16", "f32"] {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("{dt}: kernel checks: ")))
            .unwrap_or_else(|| panic!("no {dt} line in\n{log}"));
        assert!(line.ends_with(" passed, 0 failed (exit 0)"), "{line}");
    }
    assert!(
        log.contains("skipped: /bin/false cannot import torch"),
        "{log}"
    );
    assert!(log.contains("tiny on cpu, f32: weights"), "{log}");
    assert!(
        log.contains("% of the copy roofline (target >= 85%: "),
        "{log}"
    );
    assert!(
        log.contains("gpu-check: kernel checks passed, benchmark ran"),
        "{log}"
    );
    // The summary's table: both stream counts, our tok/s, no torch numbers, our roofline.
    let lines: Vec<&str> = log.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("streams  ours tok/s"))
        .unwrap_or_else(|| panic!("no summary table in\n{log}"));
    for (row, b) in lines[header + 1..header + 3].iter().zip(["1", "3"]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), 7, "{row}");
        assert_eq!(cells[0], b, "{row}");
        assert!(
            cells[1].replace(',', "").parse::<f64>().unwrap() > 0.0,
            "{row}"
        );
        assert_eq!(cells[2..6], ["-", "-", "-", "-"], "{row}");
        assert!(cells[6].ends_with('%'), "{row}");
    }

    // $OUT: the log, our report, the raw outputs; nothing else (the device tool takes 8 files).
    let mut kept: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        ["gpu-check-raw.tar.gz", "gpu-check.log", "ours-tiny.json"]
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("ours-tiny.json")).unwrap())
            .unwrap();
    assert_eq!(report["shape"], "tiny");
    let saved = std::fs::read_to_string(out_dir.join("gpu-check.log")).unwrap();
    assert!(saved.contains("gpu-check: kernel checks passed"), "{saved}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn a_failing_kernel_check_fails_the_run_and_the_rest_still_runs() {
    let dir = scratch("fail");
    let fake = dir.join("fake-bench");
    std::fs::write(
        &fake,
        "#!/usr/bin/env bash\n\
         case \" $* \" in\n\
         *' --kernel-check '*) echo 'ok    bf16 a  max_abs_diff 1e-3 tolerance 2e-2';\n\
           echo 'FAIL  bf16 b  max_abs_diff 1e0 tolerance 2e-2';\n\
           echo 'kernel checks: 1 passed, 1 failed'; exit 1;;\n\
         *' --random-weights '*) echo 'ai-sandbox-bench: error: out of memory' >&2; exit 1;;\n\
         esac\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let out_dir = dir.join("out");
    let out = gpu_check(&fake, &out_dir);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("bf16: kernel checks: 1 passed, 1 failed (exit 1)"),
        "{log}"
    );
    assert!(log.contains("   FAIL  bf16 b"), "{log}");
    assert!(
        log.contains("| ai-sandbox-bench: error: out of memory"),
        "{log}"
    );
    assert!(
        log.contains("tiny: our benchmark produced no report"),
        "{log}"
    );
    assert!(log.contains("gpu-check: FAILED kernel checks"), "{log}");

    let missing = gpu_check(&dir.join("absent"), &out_dir);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    let _ = std::fs::remove_dir_all(&dir);
}
