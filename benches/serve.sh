#!/usr/bin/env bash
# Serving side by side: `tsukuru serve`, llama.cpp's own C++ server (`llama-server`, continuous
# batching; built by benches/llama_server.sh) and the llama-cpp-python package's OpenAI server
# (installed by benches/llama_venv.sh), all on the same weights (tsukuru's GGUF export, f32), loaded
# by the same generator at 1, 8 and 32 concurrent streams: throughput, TTFT and ITL p50 / p99.
# The Python server runs requests one at a time and is told not to cut a running one short.
# Usage: benches/serve.sh [MODEL_DIR (default runs/speedrun/align)] [serve_load.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-runs/speedrun/align}"
threads="${THREADS:-2}"
test -d "$model" || { echo "no model at $model: run \`tsukuru speedrun\` first or give a model directory" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release -p tsukuru-cli
bin="$target/release/tsukuru"
source benches/llama_venv.sh
source benches/llama_server.sh

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" export gguf --model "$model" --out "$work/model.gguf" --dtype f32 > /dev/null
ctx=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['max_seq_len'])" "$(ls -d "$model"/step-* 2>/dev/null | tail -1 || echo "$model")/config.json")
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

RAYON_NUM_THREADS="$threads" "$bin" serve --model "$model" --port 0 --max-running 32 --max-queued 256 > "$work/tsukuru.log" 2>&1 &
pids+=($!)
native_port=$(free_port)
# 32 slots sharing one cache of 32 contexts, like tsukuru's.
"$llama_server" -m "$work/model.gguf" --host 127.0.0.1 --port "$native_port" -c $((ctx * 32)) -np 32 \
  -t "$threads" -tb "$threads" > "$work/llama-server.log" 2>&1 &
pids+=($!)
port=$(free_port)
"$llama_venv/bin/python" -m llama_cpp.server --model "$work/model.gguf" --host 127.0.0.1 --port "$port" \
  --n_ctx "$ctx" --n_threads "$threads" --n_threads_batch "$threads" --interrupt_requests False \
  > "$work/llama.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  grep -q "serving" "$work/tsukuru.log" && curl -sf "http://127.0.0.1:$port/v1/models" > /dev/null \
    && curl -sf "http://127.0.0.1:$native_port/health" > /dev/null && break
  sleep 0.2
done
tsukuru_url=$(sed -n 's/.* on \(http:[^ ]*\) .*/\1/p' "$work/tsukuru.log" | head -1)
test -n "$tsukuru_url" || { cat "$work/tsukuru.log"; exit 1; }
curl -sf "http://127.0.0.1:$native_port/health" > /dev/null || { tail "$work/llama-server.log"; exit 1; }
curl -sf "http://127.0.0.1:$port/v1/models" > /dev/null || { tail "$work/llama.log"; exit 1; }
echo "model $model (context $ctx), $threads threads each; machine: $(nproc) cores, $(uname -m)"
python3 benches/serve_load.py "tsukuru=$tsukuru_url" "llama-server=http://127.0.0.1:$native_port" \
  "llama-cpp-python=http://127.0.0.1:$port" --concurrency 1,8,32 --ban 0-15 "${@:2}"
