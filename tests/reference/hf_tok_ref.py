#!/usr/bin/env python3
"""Independent reference for Hugging Face model folders (see engine/tests/hf_tokenizer_reference.rs):
transformers' own `AutoTokenizer.from_pretrained(folder)` (no torch needed for fast tokenizers)
and its `apply_chat_template`, i.e. exactly what a Python user of the folder gets.

Input (stdin, JSON):
  {"dir": PATH, "texts": [str, ...],
   "chats": [{"messages": [...], "add_generation_prompt": bool}, ...]}
Output (stdout, JSON):
  {"ids": [[int]],            # encode(text, add_special_tokens=False)
   "ids_special": [[int]],    # encode(text) with the tokenizer's own special-token handling (BOS)
   "rendered": [{"text": str} | {"error": str}],
   "bos_token_id": int | null, "eos_token": str | null}
Exit 3 with a pip line on stderr when a package is missing.
"""
import json
import sys

PIP = "pip install transformers==5.23.0 jinja2==3.1.6"

try:
    from transformers import AutoTokenizer
except ImportError as e:
    print(f"hf_tok_ref.py: missing Python package ({e}); install with: {PIP}", file=sys.stderr)
    sys.exit(3)


def main():
    req = json.load(sys.stdin)
    tok = AutoTokenizer.from_pretrained(req["dir"], local_files_only=True)
    texts = req.get("texts", [])
    out = {
        "ids": [tok.encode(t, add_special_tokens=False) for t in texts],
        "ids_special": [tok.encode(t) for t in texts],
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "rendered": [],
    }
    for chat in req.get("chats", []):
        try:
            text = tok.apply_chat_template(
                chat["messages"], tokenize=False, add_generation_prompt=chat["add_generation_prompt"]
            )
            out["rendered"].append({"text": text})
        except Exception as e:  # the template's raise_exception, or a broken template
            out["rendered"].append({"error": str(e)})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
