"""Side-by-side speed of llama.cpp (llama-cpp-python) and our server on one GGUF.

Run by bench/compare-llamacpp, which prepares the venv and builds the release server. Same model,
same thread count, same prompt token ids, same number of greedy output tokens with EOS banned.
llama.cpp: prefill = one timed eval() of the prompt after reset(); decode = a timed loop of
single-token eval() calls picking the argmax with EOS masked. Ours: timings.prompt_per_second and
timings.predicted_per_second of POST /v1/completions (prompt sent as token ids), each run on a
freshly started server (empty prefix cache, so every prefill is computed in full), before and after
the llama.cpp runs. Ratios are of medians. The last
line printed is exactly "decode ratio (ours/llama.cpp): X.XX; prefill ratio: Y.YY".
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import llama_cpp
from llama_cpp import Llama

# Fixed prompt (about 120 tokens with SmolLM2's tokenizer); it must not start like FLUSH_PROMPT.
PROMPT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe "
    "built two-wheeled machines that riders pushed along with their feet. Pedals attached to the "
    "front wheel came decades later, followed by the chain drive, pneumatic tyres and lighter "
    "steel frames. By the end of the century the safety bicycle had made cycling popular with "
    "millions of people, changing how they travelled to work, met friends and explored the "
    "countryside. Today bicycles are used for commuting, sport and delivery in cities around the "
    "world, and engineers keep improving their gears, brakes and materials. In this short essay, I"
)
FLUSH_PROMPT = "Zebras are"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=600):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"our server answered HTTP {e.code}: {e.read().decode(errors='replace')}")


def run_llamacpp(model, threads, ids, n_out, runs, ban):
    llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                n_batch=512, verbose=False)
    prefill, decode = [], []
    for _ in range(runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        prefill.append(len(ids) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(n_out):
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1),
                                        shape=(llm.n_vocab(),)).copy()
            row[ban] = -np.inf
            llm.eval([int(np.argmax(row))])
        decode.append(n_out / (time.perf_counter() - t0))
    del llm
    return prefill, decode


def run_ours(binary, model, threads, ids, n_out, runs, ban):
    """`runs` timed requests, each on a freshly started server (its prefix cache empty, so the
    whole prompt is computed)."""
    prefill, decode = [], []
    for _ in range(runs):
        p, d = run_ours_once(binary, model, threads, ids, n_out, ban)
        prefill.append(p)
        decode.append(d)
    return prefill, decode


def run_ours_once(binary, model, threads, ids, n_out, ban):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "--model", model, "--host", "127.0.0.1", "--port", str(port),
                             "--threads", str(threads), "--served-model-name", "m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"our server exited with {proc.returncode} during startup")
            try:
                if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                    break
            except Exception:
                pass
            if time.time() > deadline:
                raise SystemExit("our server not healthy after 180 s")
            time.sleep(0.1)
        bias = {str(t): -100 for t in ban}
        # A warm-up on another prompt (first-use costs), sharing no 16-token block with `ids`.
        post(base + "/v1/completions", {"model": "m", "prompt": FLUSH_PROMPT, "max_tokens": 1})
        r = post(base + "/v1/completions", {"model": "m", "prompt": ids, "max_tokens": n_out,
                                            "temperature": 0, "logit_bias": bias})
        t, u = r["timings"], r["usage"]
        if u["completion_tokens"] != n_out or t["prompt_n"] != len(ids):
            raise SystemExit(f"unexpected counts: usage {u}, timings {t} (want {len(ids)} prompt"
                             f" tokens computed, {n_out} generated)")
        return t["prompt_per_second"], t["predicted_per_second"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fmt(xs):
    return " ".join(f"{x:.1f}" for x in xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="our release ai-sandbox-api binary")
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3, help="runs per engine (ours: per server start)")
    ap.add_argument("--ban", default="0,2", help="EOS token ids to mask (SmolLM2: 0,2)")
    a = ap.parse_args()
    ban = [int(x) for x in a.ban.split(",") if x.strip()]
    tok = Llama(model_path=a.model, vocab_only=True, verbose=False)
    ids = tok.tokenize(PROMPT.encode(), add_bos=False, special=True)
    del tok
    log(f"prompt {len(ids)} tokens, {a.max_tokens} output tokens, {a.threads} threads, "
        f"llama-cpp-python {llama_cpp.__version__}; load {open('/proc/loadavg').read().strip()}")
    log("ours (fresh server) ...")
    op1, od1 = run_ours(a.bin, a.model, a.threads, ids, a.max_tokens, a.runs, ban)
    log("llama.cpp ...")
    lp, ld = run_llamacpp(a.model, a.threads, ids, a.max_tokens, a.runs, ban)
    log("ours again (fresh server) ...")
    op2, od2 = run_ours(a.bin, a.model, a.threads, ids, a.max_tokens, a.runs, ban)
    op, od = op1 + op2, od1 + od2
    rows = [("prefill tok/s", op, lp), ("decode tok/s", od, ld)]
    print(f"load after: {open('/proc/loadavg').read().strip()}")
    print(f"| {'metric':<14}| {'ours (median)':>14} | {'llama.cpp (median)':>18} | ratio | ours runs | llama.cpp runs")
    ratios = {}
    for name, ours, theirs in rows:
        mo, mt = statistics.median(ours), statistics.median(theirs)
        ratios[name] = mo / mt
        print(f"| {name:<14}| {mo:>14.1f} | {mt:>18.1f} | {mo / mt:5.2f} | {fmt(ours)} | {fmt(theirs)}")
    print(f"decode ratio (ours/llama.cpp): {ratios['decode tok/s']:.2f}; "
          f"prefill ratio: {ratios['prefill tok/s']:.2f}")


if __name__ == "__main__":
    main()
