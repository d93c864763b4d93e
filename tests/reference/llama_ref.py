#!/usr/bin/env python3
"""Independent reference forward pass for Llama-family GGUF models (llama, mistral, qwen2).

Plain numpy in float64, written from the Hugging Face modelling code's maths rather than from
llama.cpp's: weights are dequantized with the `gguf` package, the Q/K rows that llama.cpp's
converter permuted for llama/mistral are permuted back, and RoPE is HF's rotate-half form.
It therefore checks our interleaved-vs-NEOX RoPE choice instead of repeating it.

Usage: llama_ref.py MODEL.gguf TOKEN_ID [TOKEN_ID ...]
Prints JSON: {"logits": [[vocab floats] for every position]} (causal attention, positions 0..n).
"""
import json
import sys

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:  # the Rust test turns this into a clear failure message
    print(f"missing python package: {e.name} (pip install gguf numpy)", file=sys.stderr)
    sys.exit(3)


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load_tensors(reader):
    out = {}
    for t in reader.tensors:
        a = quants.dequantize(t.data, t.tensor_type)
        # gguf lists dims innermost-first; numpy wants outermost-first.
        shape = tuple(int(d) for d in reversed(t.shape))
        out[t.name] = np.asarray(a, dtype=np.float64).reshape(shape)
    return out


def unpermute(w, n_head):
    """Undo llama.cpp's convert_hf_to_gguf `permute` (rows of each head: halves -> pairs)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    reader = gguf.GGUFReader(sys.argv[1])
    ids = [int(a) for a in sys.argv[2:]]
    arch = field(reader, "general.architecture")
    if arch not in ("llama", "mistral", "qwen2"):
        print(f"unsupported arch {arch}", file=sys.stderr)
        sys.exit(2)
    k = lambda name, default=None: field(reader, f"{arch}.{name}", default)
    hidden = int(k("embedding_length"))
    n_layers = int(k("block_count"))
    n_head = int(k("attention.head_count"))
    n_kv = int(k("attention.head_count_kv", n_head))
    eps = float(k("attention.layer_norm_rms_epsilon"))
    base = float(k("rope.freq_base", 10000.0))
    hd = int(k("attention.key_length", hidden // n_head))
    scaling = k("rope.scaling.type", "none")
    factor = float(k("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    window = k("attention.sliding_window")
    W = load_tensors(reader)

    # HF rotary embedding (rotate-half layout), with linear scaling and llama3 freq factors.
    inv_freq = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)) / factor
    if "rope_freqs.weight" in W:
        inv_freq = inv_freq / W["rope_freqs.weight"]
    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    ang = np.outer(pos, inv_freq)
    ang = np.concatenate([ang, ang], axis=-1)  # [n, hd]
    cos, sin = np.cos(ang), np.sin(ang)

    i = np.arange(n)
    allowed = i[None, :] <= i[:, None]
    if window:
        allowed &= (i[:, None] - i[None, :]) < int(window)
    mask = np.where(allowed, 0.0, -np.inf)

    x = W["token_embd.weight"][ids]  # [n, hidden]
    group = n_head // n_kv
    for l in range(n_layers):
        p = f"blk.{l}."
        wq, wk = W[p + "attn_q.weight"], W[p + "attn_k.weight"]
        bq, bk = W.get(p + "attn_q.bias"), W.get(p + "attn_k.bias")
        if arch in ("llama", "mistral"):
            wq, wk = unpermute(wq, n_head), unpermute(wk, n_kv)
            bq = None if bq is None else unpermute(bq, n_head)
            bk = None if bk is None else unpermute(bk, n_kv)
        h = rms_norm(x, W[p + "attn_norm.weight"], eps)
        q = h @ wq.T + (0 if bq is None else bq)
        kk = h @ wk.T + (0 if bk is None else bk)
        v = h @ W[p + "attn_v.weight"].T + W.get(p + "attn_v.bias", 0)
        q = q.reshape(n, n_head, hd).transpose(1, 0, 2)
        kk = kk.reshape(n, n_kv, hd).transpose(1, 0, 2)
        v = v.reshape(n, n_kv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        kk = kk * cos + rotate_half(kk) * sin
        kk = np.repeat(kk, group, axis=0)  # HF repeat_kv: head h uses kv head h // group
        v = np.repeat(v, group, axis=0)
        s = q @ kk.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, n_head * hd)
        x = x + a @ W[p + "attn_output.weight"].T
        h = rms_norm(x, W[p + "ffn_norm.weight"], eps)
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
    x = rms_norm(x, W["output_norm.weight"], eps)
    out = W.get("output.weight", W["token_embd.weight"])
    logits = x @ out.T
    json.dump({"logits": logits.astype(np.float32).tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
