#!/usr/bin/env python3
"""Independent reference for the engine's tokenizer and chat template (see engine/tests/tokenizer_reference.rs).

Tokenizer: Hugging Face `transformers` builds its own tokenizer from the GGUF metadata
(`convert_gguf_tokenizer`, the code behind `AutoTokenizer.from_pretrained(dir, gguf_file=...)`;
we call it directly because transformers' GGUF *file reader* imports torch, which we don't want).
The metadata is read with the `gguf` package. transformers has no split rule for
`tokenizer.ggml.pre = "smollm"` and would fall back to plain GPT-2 splitting, so for that value we
install the pre-tokenizer of SmolLM2's own tokenizer.json (Digits(individual) + ByteLevel with
GPT-2's regex), which is how the model was trained.

Chat templates: transformers' `render_jinja_template` (jinja2 with trim_blocks, lstrip_blocks,
loopcontrols, raise_exception, tojson, strftime_now), i.e. what `apply_chat_template` renders.

Input (stdin, JSON):
  {"gguf": PATH,
   "texts": [str, ...],                                   # ids for each (no BOS added)
   "chats": [{"messages": [...], "add_generation_prompt": bool,
              "template": str | null, "bos_token": str, "eos_token": str}, ...]}
  A chat without "template" uses the GGUF's tokenizer.chat_template and its bos/eos token texts.
Output (stdout, JSON): {"ids": [[int]], "rendered": [{"text": str} | {"error": str}]}
Exit 3 with a pip line on stderr when a package is missing.
"""
import json
import sys

PIP = "pip install transformers==5.23.0 gguf==0.19.0 jinja2==3.1.6"

try:
    import gguf
    from tokenizers import pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    from transformers.utils.chat_template_utils import render_jinja_template
except ImportError as e:
    print(f"tok_ref.py: missing Python package ({e}); install with: {PIP}", file=sys.stderr)
    sys.exit(3)


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def build_tokenizer(reader):
    tok_dict = {
        "tokenizer_type": field(reader, "tokenizer.ggml.model"),
        "pre_tokenizer_type": field(reader, "tokenizer.ggml.pre"),
        "tokens": field(reader, "tokenizer.ggml.tokens"),
        "token_type": field(reader, "tokenizer.ggml.token_type"),
    }
    for key, name in (("merges", "merges"), ("scores", "scores")):
        value = field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            tok_dict[name] = value
    arch = field(reader, "general.architecture")
    backend, _ = convert_gguf_tokenizer(arch, tok_dict)
    if tok_dict["pre_tokenizer_type"] == "smollm":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    return backend, tok_dict["tokens"]


def main():
    req = json.load(sys.stdin)
    reader = gguf.GGUFReader(req["gguf"])
    backend, tokens = build_tokenizer(reader)
    ids = [backend.encode(t, add_special_tokens=False).ids for t in req.get("texts", [])]

    def token(key):
        i = field(reader, key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else ""

    rendered = []
    for chat in req.get("chats", []):
        template = chat.get("template") or field(reader, "tokenizer.chat_template")
        try:
            out, _ = render_jinja_template(
                conversations=[chat["messages"]],
                chat_template=template,
                add_generation_prompt=chat.get("add_generation_prompt", False),
                bos_token=chat.get("bos_token", token("tokenizer.ggml.bos_token_id")),
                eos_token=chat.get("eos_token", token("tokenizer.ggml.eos_token_id")),
            )
            rendered.append({"text": out[0]})
        except Exception as e:  # a template's raise_exception, reported to the Rust side
            rendered.append({"error": str(e)})
    json.dump({"ids": ids, "rendered": rendered}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
