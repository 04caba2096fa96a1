#!/usr/bin/env python3
"""Checks that Python's `tokenizers` encodes exactly as tsukuru does with the same tokenizer.json.

usage: tokenizer_parity.py TOKENIZER_JSON TEXTS_JSONL RUST_IDS_JSONL

TEXTS_JSONL holds one JSON string per line; RUST_IDS_JSONL the ids tsukuru produced for each
(`tsukuru tokenizer encode --jsonl`). Exits non-zero on any difference, naming the text.
"""
import json
import sys

from tokenizers import Tokenizer


def main():
    tok_path, texts_path, ids_path = sys.argv[1:4]
    tok = Tokenizer.from_file(tok_path)
    texts = [json.loads(line) for line in open(texts_path, encoding="utf-8")]
    rust = [json.loads(line) for line in open(ids_path, encoding="utf-8")]
    if len(texts) != len(rust):
        sys.exit(f"{len(texts)} texts but {len(rust)} id lists")
    bad = 0
    for i, (text, ids) in enumerate(zip(texts, rust)):
        py = tok.encode(text, add_special_tokens=False).ids
        if py != ids:
            bad += 1
            print(f"text {i} differs: {text[:60]!r}\n  rust   {ids[:20]}\n  python {py[:20]}")
        elif tok.decode(py, skip_special_tokens=False) != text:
            bad += 1
            print(f"text {i} does not round-trip in Python: {text[:60]!r}")
    print(f"tokenizer parity: {len(texts) - bad}/{len(texts)} texts encode identically in Python tokenizers")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
