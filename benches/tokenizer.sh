#!/usr/bin/env bash
# Tokenizer benchmark: tsukuru vs Python `tokenizers` and `tiktoken`, side by side on the same text.
#
#   bash benches/tokenizer.sh [SCALE] [VOCAB]     (defaults: medium 8192)
#
# Generates the built-in world at SCALE, prepares it, then measures
#   * training time: `tsukuru tokenizer train` vs Python tokenizers' train_from_iterator (same settings);
#   * encoding throughput, 1 thread and all threads: tsukuru vs Python tokenizers vs tiktoken built
#     from the same merges.
# Installs the Python peers into a cached virtualenv. Prints JSON lines and a table of ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-medium}"
vocab="${2:-8192}"
repeat=5
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release -p tsukuru-cli
bin="$target/release/tsukuru"

venv="${TSUKURU_BENCH_VENV:-$HOME/.cache/tsukuru/venv-bench}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tokenizers, tiktoken, zstandard" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "tokenizers==0.22.*" tiktoken zstandard
fi

work=".bench/tokenizer-$scale"
mkdir -p "$work"
"$bin" world generate --quiet --out "$work/world" --scale "$scale" > /dev/null
"$bin" data prepare --quiet --input "$work/world/corpus.jsonl" --out "$work/data" > /dev/null
rm -rf "$work/tok"
start=$(date +%s.%N)
"$bin" tokenizer train --quiet --data "$work/data" --vocab-size "$vocab" --out "$work/tok" > /dev/null
end=$(date +%s.%N)
bytes=$(python3 -c "import json;print(json.load(open('$work/tok/manifest.json'))['stats']['train_text_bytes'])")
results="$work/results.jsonl"
python3 -c "print('{\"bench\": \"tokenizer_train\", \"impl\": \"tsukuru\", \"bytes\": $bytes, \"seconds\": ' + str($end - $start) + '}')" > "$results"
"$bin" bench tokenizer --data "$work/data" --tokenizer "$work/tok" --repeat "$repeat" >> "$results"
"$venv/bin/python" benches/tokenizer_peer.py "$work/data" "$work/tok/tokenizer.json" "$vocab" 64 "$repeat" >> "$results"
cat "$results"

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = {r["impl"]: r for r in rows if r["bench"] == "tokenizer_train"}
enc = {(r["impl"], r["threads"]): r for r in rows if r["bench"] == "tokenizer_encode"}
mib = train["tsukuru"]["bytes"] / 2**20
print(f"\ntraining on {mib:.1f} MiB: tsukuru {train['tsukuru']['seconds']:.2f}s (whole command), "
      f"Python tokenizers {train['hf_tokenizers_python']['seconds']:.2f}s, "
      f"ratio {train['hf_tokenizers_python']['seconds'] / train['tsukuru']['seconds']:.2f}x; "
      f"same vocabulary: {train['hf_tokenizers_python']['same_vocab_as_tsukuru']}")
for threads in sorted({t for _, t in enc}):
    ours = enc[("tsukuru", threads)]["mib_per_s"]
    for peer in ("hf_tokenizers_python", "tiktoken"):
        p = enc[(peer, threads)]["mib_per_s"]
        print(f"encode, {threads} thread(s): tsukuru {ours:.2f} MiB/s, {peer} {p:.2f} MiB/s, ratio {ours / p:.2f}x")
PY
