#!/usr/bin/env python3
"""The PyTorch reference for `ai-sandbox-bench --random-weights`: the same model shape with random
weights, in PyTorch/transformers on the same device, timed the same way.

    python3 bench/torch_reference.py --config-from OURS.json [--device cuda] [--json]
    python3 bench/torch_reference.py --shape mistral-7b [--streams 1,8,32,64,128] ...

The shape comes from our own report (`--config-from`, the `config` object of
`ai-sandbox-bench --random-weights SHAPE --json`), so both runs build exactly the same matrices;
`--shape` names the same presets for a standalone run.

Two measurements per stream count B, both after warm-up and synchronised:
- `loop`: B random prompts prefilled in one pass, `--warmup-steps` untimed decode steps, then
  `--decode-steps` timed greedy steps, one forward pass of B tokens each, the argmax on the
  device and the ids copied to the host every step (what our benchmark does).
- `generate` (transformers only): `model.generate` greedy with fixed lengths
  (min_new_tokens = max_new_tokens); decode time = time(1 + N new tokens) - time(1 new token).

With `--impl auto` (default) the model is transformers' LlamaForCausalLM / MistralForCausalLM /
Qwen2ForCausalLM (`attn_implementation="sdpa"`, dynamic KV cache, random init on the device);
when transformers can't be imported, a plain-PyTorch Llama of the same shape runs the `loop`
measurement instead (a preallocated KV cache, SDPA), and the report says so.
"""

import argparse
import json
import sys
import time

PRESETS = {
    # Mirrors ModelConfig::preset in engine/src/model/presets.rs.
    "mistral-7b": dict(arch="mistral", vocab_size=32768, hidden_size=4096, n_layers=32, n_heads=32,
                       n_kv_heads=8, ffn_size=14336, context_length=32768, rope_theta=1e6),
    "llama-8b": dict(arch="llama", vocab_size=128256, hidden_size=4096, n_layers=32, n_heads=32,
                     n_kv_heads=8, ffn_size=14336, context_length=8192, rope_theta=5e5),
    "qwen2-7b": dict(arch="qwen2", vocab_size=152064, hidden_size=3584, n_layers=28, n_heads=28,
                     n_kv_heads=4, ffn_size=18944, context_length=32768, rope_theta=1e6, rms_eps=1e-6),
    "tiny": dict(arch="llama", vocab_size=256, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                 ffn_size=128, context_length=512, rope_theta=1e4),
}


def log(msg):
    print(f"torch_reference: {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=sorted(PRESETS), help="a preset shape")
    src.add_argument("--config-from", metavar="REPORT.json",
                     help="take the shape from an `ai-sandbox-bench --random-weights --json` report")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--dtype", default=None, choices=["bf16", "f16", "f32"],
                   help="default: bf16 on CUDA, f32 on the CPU")
    p.add_argument("--streams", default="1,8,32,64,128", help="comma-separated stream counts")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--warmup-steps", type=int, default=4)
    p.add_argument("--impl", default="auto", choices=["auto", "transformers", "plain"])
    p.add_argument("--methods", default="loop,generate",
                   help="loop and/or generate (generate needs transformers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    a.streams = [int(s) for s in a.streams.split(",") if s.strip()]
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if not a.streams or min(a.streams) < 1:
        p.error("--streams needs positive stream counts")
    if a.prompt_len < 1 or a.decode_steps < 1 or a.warmup_steps < 0:
        p.error("--prompt-len and --decode-steps must be >= 1, --warmup-steps >= 0")
    if set(a.methods) - {"loop", "generate"} or not a.methods:
        p.error("--methods: loop and/or generate")
    return a


def load_shape(a):
    """The shape as a dict with every field of our report's `config` object."""
    if a.config_from:
        with open(a.config_from, encoding="utf-8") as f:
            report = json.load(f)
        shape = dict(report["config"])
        shape["name"] = report.get("shape", "from-report")
    else:
        shape = dict(PRESETS[a.shape])
        shape["name"] = a.shape
    shape.setdefault("rms_eps", 1e-5)
    shape.setdefault("sliding_window", None)
    shape.setdefault("head_dim", shape["hidden_size"] // shape["n_heads"])
    return shape


def percentile50(xs):
    s = sorted(xs)
    mid = (len(s) - 1) / 2
    return (s[int(mid)] + s[int(mid + 0.5)]) / 2


class Sync:
    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def __call__(self):
        if self.cuda:
            self.torch.cuda.synchronize()


def build_transformers(torch, shape, dtype, device):
    import transformers
    from transformers import AutoModelForCausalLM

    classes = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}
    cls = getattr(transformers, classes.get(shape["arch"], "LlamaConfig"))
    kw = dict(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
              intermediate_size=shape["ffn_size"], num_hidden_layers=shape["n_layers"],
              num_attention_heads=shape["n_heads"], num_key_value_heads=shape["n_kv_heads"],
              head_dim=shape["head_dim"], max_position_embeddings=shape["context_length"],
              rope_theta=shape["rope_theta"], rms_norm_eps=shape["rms_eps"],
              tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if shape["arch"] in ("mistral", "qwen2"):
        # MistralConfig defaults to a 4096-token window; ours is the shape's (None for v0.3).
        kw["sliding_window"] = shape["sliding_window"]
    cfg = cls(**kw)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # transformers 4.x spells it torch_dtype
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype, attn_implementation="sdpa")
    model.eval()
    return model, f"transformers {transformers.__version__} {type(model).__name__} (sdpa)"


class PlainLlama:
    """A Llama-family decoder in plain PyTorch: random weights (normal, std 0.02; norms 1),
    rotate-half RoPE, GQA through SDPA, SwiGLU, a KV cache preallocated per run."""

    def __init__(self, torch, shape, dtype, device, seed):
        self.torch, self.s, self.dtype, self.device = torch, shape, dtype, device
        g = torch.Generator(device=device).manual_seed(seed)
        h, hd = shape["hidden_size"], shape["head_dim"]
        nh, kv, f = shape["n_heads"], shape["n_kv_heads"], shape["ffn_size"]

        def w(*dims):
            return torch.randn(*dims, generator=g, device=device, dtype=dtype) * 0.02

        ones = lambda: torch.ones(h, device=device, dtype=dtype)  # noqa: E731
        self.embed = w(shape["vocab_size"], h)
        self.layers = [dict(q=w(nh * hd, h), k=w(kv * hd, h), v=w(kv * hd, h), o=w(h, nh * hd),
                            gate=w(f, h), up=w(f, h), down=w(h, f), n1=ones(), n2=ones())
                       for _ in range(shape["n_layers"])]
        self.norm, self.out = ones(), w(shape["vocab_size"], h)
        inv = 1.0 / (shape["rope_theta"] ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        self.inv_freq = inv
        self.cache = None

    def parameters(self):
        yield self.embed
        yield self.norm
        yield self.out
        for layer in self.layers:
            yield from layer.values()

    def new_cache(self, batch, length):
        s, t = self.s, self.torch
        dims = (s["n_layers"], batch, s["n_kv_heads"], length, s["head_dim"])
        self.cache = (t.empty(dims, device=self.device, dtype=self.dtype),
                      t.empty(dims, device=self.device, dtype=self.dtype))

    def _rms(self, x, w):
        t = self.torch
        xf = x.float()
        return (xf * t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.s["rms_eps"])).to(x.dtype) * w

    def _rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rot = self.torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def forward(self, ids, pos):
        """ids [B, T] at positions pos..pos+T (pos 0 with T > 1: a prefill); the last token's logits."""
        t, s = self.torch, self.s
        F = t.nn.functional
        b, n = ids.shape
        nh, kv, hd = s["n_heads"], s["n_kv_heads"], s["head_dim"]
        angles = t.outer(t.arange(pos, pos + n, device=self.device, dtype=t.float32), self.inv_freq)
        angles = t.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(self.dtype), angles.sin().to(self.dtype)
        x = self.embed[ids]
        ck, cv = self.cache
        for i, L in enumerate(self.layers):
            y = self._rms(x, L["n1"])
            q = (y @ L["q"].T).view(b, n, nh, hd).transpose(1, 2)
            k = (y @ L["k"].T).view(b, n, kv, hd).transpose(1, 2)
            v = (y @ L["v"].T).view(b, n, kv, hd).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            ck[i, :, :, pos:pos + n] = k
            cv[i, :, :, pos:pos + n] = v
            keys, vals = ck[i, :, :, :pos + n], cv[i, :, :, :pos + n]
            if kv != nh:
                keys = keys.repeat_interleave(nh // kv, dim=1)
                vals = vals.repeat_interleave(nh // kv, dim=1)
            a = F.scaled_dot_product_attention(q, keys, vals, is_causal=n > 1)
            x = x + a.transpose(1, 2).reshape(b, n, nh * hd) @ L["o"].T
            y = self._rms(x, L["n2"])
            x = x + (F.silu(y @ L["gate"].T) * (y @ L["up"].T)) @ L["down"].T
        return self._rms(x[:, -1], self.norm) @ self.out.T


def loop_level(torch, model, plain, shape, batch, a, sync, gen):
    """Prefill + warm-up + timed greedy decode of `batch` streams; seconds of each phase."""
    ids = torch.randint(0, shape["vocab_size"], (batch, a.prompt_len), generator=gen, device="cpu")
    ids = ids.to(model.device)
    total = a.prompt_len + a.warmup_steps + a.decode_steps
    cache = None
    sync()
    t0 = time.perf_counter()
    if plain:
        model.new_cache(batch, total)
        logits = model.forward(ids, 0)
    else:
        from transformers import DynamicCache
        cache = DynamicCache()
        try:
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        except TypeError:  # transformers before logits_to_keep
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        logits, cache = out.logits[:, -1], out.past_key_values
    nxt = logits.argmax(-1).view(batch, 1)
    nxt.cpu()
    sync()
    prefill_s = time.perf_counter() - t0
    pos = a.prompt_len

    def step(nxt, pos):
        nonlocal cache
        if plain:
            logits = model.forward(nxt, pos)
        else:
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            logits, cache = out.logits[:, -1], out.past_key_values
        nxt = logits.argmax(-1).view(batch, 1)
        nxt.cpu()  # the ids to the host every step, as ours
        return nxt

    for _ in range(a.warmup_steps):
        nxt = step(nxt, pos)
        pos += 1
    sync()
    steps = []
    t0 = time.perf_counter()
    for _ in range(a.decode_steps):
        s0 = time.perf_counter()
        nxt = step(nxt, pos)
        pos += 1
        steps.append(time.perf_counter() - s0)
    sync()
    decode_s = time.perf_counter() - t0
    return dict(prefill_tok_s=batch * a.prompt_len / prefill_s,
                aggregate_tok_s=batch * a.decode_steps / decode_s,
                per_stream_tok_s=a.decode_steps / decode_s,
                step_ms_p50=1e3 * percentile50(steps))


def generate_level(torch, model, shape, batch, a, sync, gen):
    """Decode tok/s of `model.generate` at fixed lengths: time(1 + N) - time(1)."""
    ids = torch.randint(0, shape["vocab_size"], (batch, a.prompt_len), generator=gen, device="cpu")
    ids = ids.to(model.device)
    mask = torch.ones_like(ids)

    def timed(new):
        sync()
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, pad_token_id=0, use_cache=True)
        sync()
        if out.shape[1] != a.prompt_len + new:
            raise RuntimeError(f"generate returned {out.shape[1] - a.prompt_len} new tokens, not {new}")
        return time.perf_counter() - t0

    timed(2)  # warm-up
    first = timed(1)
    full = timed(1 + a.decode_steps)
    decode_s = max(full - first, 1e-9)
    return dict(aggregate_tok_s=batch * a.decode_steps / decode_s,
                per_stream_tok_s=a.decode_steps / decode_s,
                first_token_s=first)


def run(a):
    try:
        import torch
    except ImportError as e:
        raise SystemExit(f"torch_reference: torch is not importable ({e}); nothing to compare with")
    shape = load_shape(a)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch_reference: --device cuda but torch sees no CUDA device")
    dtype_name = a.dtype or ("bf16" if device.type == "cuda" else "f32")
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype_name]
    torch.manual_seed(a.seed)
    sync = Sync(torch, device)
    plain = a.impl == "plain"
    note = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        model = None
        if not plain:
            try:
                model, impl = build_transformers(torch, shape, dtype, device)
            except ImportError as e:
                if a.impl == "transformers":
                    raise SystemExit(f"torch_reference: transformers is not importable ({e})")
                note = f"transformers is not importable ({e}): plain-PyTorch decode loop instead"
                log(note)
                plain = True
        if plain:
            model = PlainLlama(torch, shape, dtype, device, a.seed)
            impl = "plain PyTorch (SDPA, preallocated KV cache)"
        sync()
        load_s = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        log(f"{impl}: {params / 1e6:.1f} M parameters on {device} in {dtype_name}, built in {load_s:.1f} s")
        methods = [m for m in a.methods if not (plain and m == "generate")]
        gen = torch.Generator().manual_seed(a.seed)
        oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        levels = []
        for b in [1] + list(a.streams):
            level = {"streams": b, "skipped": None}
            for m in methods:
                log(f"{b} streams: {m}")
                try:
                    if m == "loop":
                        level["loop"] = loop_level(torch, model, plain, shape, b, a, sync, gen)
                    else:
                        level["generate"] = generate_level(torch, model, shape, b, a, sync, gen)
                except oom as e:
                    level["skipped"] = f"out of memory in {m}: {str(e).splitlines()[0]}"
                    log(level["skipped"])
                finally:
                    if plain:
                        model.cache = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            levels.append(level)
    single, levels = levels[0], levels[1:]
    return {
        "shape": shape["name"],
        "impl": impl,
        "note": note,
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": dtype_name,
        "config": shape,
        "params": params,
        "load_s": load_s,
        "prompt_len": a.prompt_len,
        "warmup_steps": a.warmup_steps,
        "decode_steps": a.decode_steps,
        "single_stream": single,
        "streams": levels,
    }


def table(r):
    lines = [f"{r['impl']}, torch {r['torch']}, {r['shape']} on {r['device']}"
             f"{' (' + r['device_name'] + ')' if r['device_name'] else ''} {r['dtype']}: "
             f"{r['params'] / 1e6:.1f} M parameters, built in {r['load_s']:.1f} s"]
    if r["note"]:
        lines.append(f"note: {r['note']}")

    def fmt(level, method, key, digits):
        v = (level.get(method) or {}).get(key)
        return "-" if v is None else f"{v:.{digits}f}"

    s = r["single_stream"]
    lines.append(f"single stream: loop {fmt(s, 'loop', 'per_stream_tok_s', 1)} tok/s "
                 f"(step p50 {fmt(s, 'loop', 'step_ms_p50', 2)} ms), "
                 f"generate {fmt(s, 'generate', 'per_stream_tok_s', 1)} tok/s")
    lines.append(f"{'streams':>7} {'prefill tok/s':>13} {'step p50 ms':>11} {'loop tok/s':>11} {'generate tok/s':>14}")
    for lv in r["streams"]:
        if lv["skipped"] and not lv.get("loop"):
            lines.append(f"{lv['streams']:>7} skipped: {lv['skipped']}")
            continue
        lines.append(f"{lv['streams']:>7} {fmt(lv, 'loop', 'prefill_tok_s', 0):>13} "
                     f"{fmt(lv, 'loop', 'step_ms_p50', 2):>11} {fmt(lv, 'loop', 'aggregate_tok_s', 1):>11} "
                     f"{fmt(lv, 'generate', 'aggregate_tok_s', 1):>14}")
    return "\n".join(lines)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    r = run(a)
    print(json.dumps(r, indent=2) if a.json else table(r))


if __name__ == "__main__":
    main()
