#!/usr/bin/env bash
# Trains the speedrun's tokenizer, encodes validation text and hard cases with tsukuru, and checks
# that Python's `tokenizers` (installed here into a cached virtualenv) produces the same ids.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet -p tsukuru-cli
bin="$target/debug/tsukuru"

venv="${TSUKURU_VENV:-$HOME/.cache/tsukuru/venv-parity}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tokenizers" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "tokenizers==0.22.*"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The speedrun's world, data and tokenizer stages (pretraining is not needed here).
run="$work/run"
"$bin" world generate --quiet --out "$run/world" > /dev/null
"$bin" data prepare --quiet --input "$run/world/corpus.jsonl" --out "$run/data" --val-fraction 0.05 > /dev/null
"$bin" tokenizer train --quiet --data "$run/data" --vocab-size 2048 --out "$run/tokenizer" > /dev/null

# Texts: every validation document plus strings chosen to break byte-level BPE.
"$venv/bin/python" - "$run" "$work/texts.jsonl" <<'PY'
import glob, json, sys
run, out = sys.argv[1], sys.argv[2]
texts = []
for line in open(f"{run}/world/heldout.jsonl", encoding="utf-8"):
    texts.append(json.loads(line)["text"])
texts = texts[:200]
texts += [
    "", " ", "\n\n\t", "hello world", "  leading and trailing  ", "numbers 1234567890 and 3.14159",
    "emoji 👨‍👩‍👧 🏳️‍🌈 👍🏽", "日本語のテキストと中文和한국어", "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "controls \x00 \x01 \x1b[31m red \x7f \u200b zero width", "right-to-left: שלום مرحبا",
    "special <|bos|> in text <|user|>hi<|end|>", "it's we're they'll I'd", "tabs\tand\r\nwindows lines",
    "\U0001F600\U0001F64F\U0010FFFF", "ascii art: ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
]
with open(out, "w", encoding="utf-8") as f:
    for t in texts:
        f.write(json.dumps(t, ensure_ascii=True) + "\n")
PY
"$bin" tokenizer encode --tokenizer "$run/tokenizer" --jsonl < "$work/texts.jsonl" > "$work/ids.jsonl"
"$venv/bin/python" scripts/tokenizer_parity.py "$run/tokenizer/tokenizer.json" "$work/texts.jsonl" "$work/ids.jsonl"
