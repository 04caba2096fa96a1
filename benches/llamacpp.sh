#!/usr/bin/env bash
# Generation against llama.cpp on the same weights at the same precision, side by side in one run.
#
#   bash benches/llamacpp.sh [--threads N] [--steps N] [--dtype f32|f16|q8_0]
#
# Makes the reference-shaped model (depth 6: d_model 384, 6 heads, SwiGLU 1,024, vocab 8,192) by a
# short speedrun on the built-in world, exports it with `tsukuru export gguf`, then times greedy
# generation (batch 1, 16-token prompt, 128 new tokens) in tsukuru and in llama.cpp built by the
# `llama-cpp-python` package (installed by the script into a cached virtualenv), after checking
# that both produce the same greedy tokens. tsukuru runs in f32; at --dtype f16 or q8_0 only
# llama.cpp's figure changes precision, and the table says so.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 steps=10 dtype=f32
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    *) echo "benches/llamacpp.sh: unknown flag $1 (use --threads, --steps, --dtype)" >&2; exit 2 ;;
  esac
done
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release -p tsukuru-cli
bin="$target/release/tsukuru"
source benches/llama_venv.sh

out=".bench/llamacpp"
mkdir -p "$out"
model="$out/runs/gen/base"
if [ ! -d "$model" ]; then
  # A briefly trained model rather than random weights: its greedy choices are clear-cut, so two
  # correct implementations agree on them despite different summation orders.
  "$bin" speedrun --quiet --runs-dir "$out/runs" --run gen --set world.scale=small \
    --set tokenizer.vocab_size=8192 --set pretrain.model.depth=6 --set pretrain.seq_len=256 --set pretrain.batch_size=8 --set pretrain.steps=60 \
    --set pretrain.eval_every=60 --set pretrain.checkpoint_every=60 >/dev/null
fi
"$bin" export gguf --model "$model" --out "$out/model-$dtype.gguf" --dtype "$dtype" --force
"$bin" bench generate --model "$model" --batch 1 --threads "$threads" --steps "$steps" > "$out/tsukuru.json"
"$llama_venv/bin/python" benches/llamacpp_peer.py "$out/model-$dtype.gguf" "$out/tsukuru.json" \
  --threads "$threads" --steps "$steps" > "$out/llamacpp.json"
python3 - "$out/tsukuru.json" "$out/llamacpp.json" "$dtype" <<'PY'
import json, sys
t = json.loads(open(sys.argv[1]).read().splitlines()[-1])
l = json.loads(open(sys.argv[2]).read().splitlines()[-1])
strip = lambda d: {k: v for k, v in d.items() if k not in ("prompt_ids", "generated")}
print(json.dumps(strip(t)))
print(json.dumps(l))
print()
print(f"same greedy tokens: {l['same_greedy_tokens']} (first {l['same_greedy_prefix']} of {l['new_tokens']} agree)")
print(f"{'':22} {'tok/s':>8}")
print(f"{'tsukuru (f32)':22} {t['tokens_per_s']:>8.1f}")
print(f"{'llama.cpp (' + sys.argv[3] + ')':22} {l['tokens_per_s']:>8.1f}   (its own decode timing: {l['decode_tokens_per_s_internal']})")
print(f"tsukuru / llama.cpp: {t['tokens_per_s'] / l['tokens_per_s']:.2f}x")
if not l["same_greedy_tokens"]:
    sys.exit("the two implementations disagree on greedy tokens; the speed comparison is not valid")
PY
