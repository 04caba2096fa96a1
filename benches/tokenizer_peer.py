#!/usr/bin/env python3
"""Python peers for the tokenizer benchmark: Hugging Face `tokenizers` and `tiktoken` on the same text.

usage: tokenizer_peer.py DATA_DIR TOKENIZER_JSON VOCAB_SIZE MAX_MIB REPEAT

Reads the train split of tsukuru's prepared text (zstd JSONL shards), then
  * trains BPE with Python `tokenizers` using the same pipeline (loaded from tsukuru's tokenizer.json)
    and the same trainer settings, and checks that it learns the same vocabulary;
  * encodes the text with that tokenizer (encode_batch, all threads; and one thread);
  * builds a `tiktoken` Encoding from the same merges (same vocabulary, same split pattern) and
    encodes with encode_ordinary_batch (all threads; and one thread), checking ids agree.
Prints one JSON line per measurement.
"""
import base64
import glob
import json
import os
import statistics
import sys
import time

import tiktoken
import zstandard
from tokenizers import Tokenizer
from tokenizers.pre_tokenizers import ByteLevel
from tokenizers.trainers import BpeTrainer

SPLIT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
)


def load_texts(data_dir, max_bytes):
    texts, total = [], 0
    for path in sorted(glob.glob(os.path.join(data_dir, "train", "*.jsonl.zst"))):
        with open(path, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f)
            for line in reader.read().decode("utf-8").splitlines():
                t = json.loads(line)["text"]
                texts.append(t)
                total += len(t.encode("utf-8"))
                if total >= max_bytes:
                    return texts, total
    return texts, total


def median_time(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def byte_decoder():
    # GPT-2's byte-to-unicode table, inverted: token strings in tokenizer.json use it.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main():
    data_dir, tok_json, vocab_size, max_mib, repeat = sys.argv[1:6]
    vocab_size, repeat = int(vocab_size), int(repeat)
    texts, total = load_texts(data_dir, int(max_mib) << 20)
    ours = Tokenizer.from_file(tok_json)
    specials = [t.content for t in sorted(ours.get_added_tokens_decoder().values(), key=lambda t: ours.token_to_id(t.content))]

    # Training: same pipeline, same settings.
    def train():
        tok = Tokenizer.from_file(tok_json)
        trainer = BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
            initial_alphabet=ByteLevel.alphabet(), max_token_length=16, show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return tok

    train_s, trained = median_time(train, 1)
    same_vocab = trained.get_vocab() == ours.get_vocab()
    print(json.dumps({"bench": "tokenizer_train", "impl": "hf_tokenizers_python", "bytes": total,
                      "seconds": train_s, "same_vocab_as_tsukuru": same_vocab}))

    # Encoding with Hugging Face tokenizers.
    for threads in (1, os.cpu_count()):
        if threads == 1:
            fn = lambda: [len(ours.encode(t, add_special_tokens=False).ids) for t in texts]
        else:
            fn = lambda: [len(e.ids) for e in ours.encode_batch(texts, add_special_tokens=False)]
        secs, counts = median_time(fn, repeat)
        print(json.dumps({"bench": "tokenizer_encode", "impl": "hf_tokenizers_python", "threads": threads,
                          "bytes": total, "tokens": sum(counts), "seconds_median": secs,
                          "mib_per_s": total / secs / 2**20}))

    # tiktoken with the same vocabulary: ranks are token ids over raw bytes.
    dec = byte_decoder()
    vocab = ours.get_vocab()
    ranks = {bytes(dec[c] for c in tok): i for tok, i in vocab.items() if tok not in specials}
    enc = tiktoken.Encoding("tsukuru", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: ours.token_to_id(s) for s in specials})
    sample = texts[:200]
    agree = all(enc.encode_ordinary(t) == ours.encode(t, add_special_tokens=False).ids for t in sample)
    for threads in (1, os.cpu_count()):
        if threads == 1:
            fn = lambda: [len(enc.encode_ordinary(t)) for t in texts]
        else:
            fn = lambda: [len(x) for x in enc.encode_ordinary_batch(texts, num_threads=threads)]
        secs, counts = median_time(fn, repeat)
        print(json.dumps({"bench": "tokenizer_encode", "impl": "tiktoken", "threads": threads, "bytes": total,
                          "tokens": sum(counts), "seconds_median": secs, "mib_per_s": total / secs / 2**20,
                          "same_ids_as_tsukuru_on_200_docs": agree}))


if __name__ == "__main__":
    main()
