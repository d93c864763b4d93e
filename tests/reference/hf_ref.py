#!/usr/bin/env python3
"""Independent reference forward pass for Hugging Face llama / mistral / qwen2 model folders.

Plain numpy in float64, written from the maths of transformers' modelling code (LlamaModel,
MistralModel, Qwen2Model), not from the engine's: RMSNorm, rotate-half RoPE (with linear
scaling), grouped-query attention (`repeat_kv`), the sliding-window causal mask per layer as
transformers decides it, qwen2's q/k/v biases, SwiGLU, tied embeddings. The safetensors files
are parsed here with json + numpy (8-byte header length, JSON header, raw little-endian data),
so bf16 needs no torch.

Usage: hf_ref.py MODEL_DIR TOKEN_ID [TOKEN_ID ...]
Prints JSON: {"logits": [[vocab floats] for every position]} (causal attention, positions 0..n).
"""
import json
import os
import struct
import sys

try:
    import numpy as np
except ImportError as e:  # the Rust test turns this into a clear failure message
    print(f"missing python package: {e.name} (pip install numpy)", file=sys.stderr)
    sys.exit(3)


def read_safetensors(path):
    """{name: float64 array} for one .safetensors file (F32, F16, BF16)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = body[start:end]
        dtype = info["dtype"]
        if dtype == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dtype == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            a = bits.view(np.float32).astype(np.float64)
        else:
            raise SystemExit(f"{path}: tensor {name} has dtype {dtype} (supported: F32, F16, BF16)")
        out[name] = a.reshape(info["shape"])
    return out


def load_weights(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    W = {}
    for name in files:
        W.update(read_safetensors(os.path.join(folder, name)))
    return W


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def layer_windows(cfg):
    """The sliding window of each layer (None = full causal attention), as transformers sets it."""
    n = cfg["num_hidden_layers"]
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if types is not None:
        return [window if t == "sliding_attention" else None for t in types]
    kind = cfg["model_type"]
    if kind == "mistral":
        return [window] * n
    if kind == "qwen2":
        if not cfg.get("use_sliding_window", False):
            return [None] * n
        m = cfg.get("max_window_layers", n)
        return [window if i >= m else None for i in range(n)]
    return [None] * n


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    folder = sys.argv[1]
    ids = [int(a) for a in sys.argv[2:]]
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    kind = cfg["model_type"]
    if kind not in ("llama", "mistral", "qwen2"):
        print(f"unsupported model_type {kind}", file=sys.stderr)
        sys.exit(2)
    hidden = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hd = cfg.get("head_dim") or hidden // n_head
    eps = float(cfg["rms_norm_eps"])
    base = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or {}
    kind_of_scaling = scaling.get("rope_type", scaling.get("type", "default"))
    if kind_of_scaling not in ("default", "linear"):
        print(f"unsupported rope_scaling {scaling}", file=sys.stderr)
        sys.exit(2)
    factor = float(scaling.get("factor", 1.0)) if kind_of_scaling == "linear" else 1.0
    W = load_weights(folder)

    # transformers' rotary embedding: inv_freq over even dims, cos/sin of [freqs, freqs].
    inv_freq = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    n = len(ids)
    pos = np.arange(n, dtype=np.float64) / factor
    ang = np.outer(pos, inv_freq)
    ang = np.concatenate([ang, ang], axis=-1)  # [n, hd]
    cos, sin = np.cos(ang), np.sin(ang)

    i = np.arange(n)
    causal = i[None, :] <= i[:, None]

    x = W["model.embed_tokens.weight"][ids]  # [n, hidden]
    group = n_head // n_kv
    for l, window in enumerate(layer_windows(cfg)):
        p = f"model.layers.{l}."
        allowed = causal if window is None else causal & ((i[:, None] - i[None, :]) < window)
        mask = np.where(allowed, 0.0, -np.inf)
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = h @ W[p + "self_attn.q_proj.weight"].T + W.get(p + "self_attn.q_proj.bias", 0)
        k = h @ W[p + "self_attn.k_proj.weight"].T + W.get(p + "self_attn.k_proj.bias", 0)
        v = h @ W[p + "self_attn.v_proj.weight"].T + W.get(p + "self_attn.v_proj.bias", 0)
        q = q.reshape(n, n_head, hd).transpose(1, 0, 2)
        k = k.reshape(n, n_kv, hd).transpose(1, 0, 2)
        v = v.reshape(n, n_kv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, group, axis=0)  # repeat_kv: head h uses kv head h // group
        v = np.repeat(v, group, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, n_head * hd)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    tied = cfg.get("tie_word_embeddings", False)
    out = W["model.embed_tokens.weight"] if tied else W["lm_head.weight"]
    logits = x @ out.T
    json.dump({"logits": logits.tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
