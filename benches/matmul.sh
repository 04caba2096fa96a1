#!/usr/bin/env bash
# Matrix-product throughput: candle (the `gemm` crate), tsukuru's batched attention kernel and
# PyTorch, on the shapes of the benchmark model's training step, side by side in one run.
#
#   bash benches/matmul.sh [THREADS]     (default 2)
#
# PyTorch is installed into the same cached virtualenv as benches/model.sh uses.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release -p tsukuru-cli
bin="$target/release/tsukuru"
source benches/torch_venv.sh
mkdir -p .bench/matmul
results=.bench/matmul/results.jsonl
RAYON_NUM_THREADS="$threads" "$bin" bench matmul | tee "$results"
"$venv/bin/python" benches/matmul_peer.py --threads "$threads" | tee -a "$results"
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
shapes = list(dict.fromkeys(r["shape"] for r in rows))
impls = list(dict.fromkeys(r["impl"] for r in rows))
print()
print(f"{'GFLOP/s':24}" + "".join(f"{i:>16}" for i in impls))
for s in shapes:
    by = {r["impl"]: r["gflops"] for r in rows if r["shape"] == s}
    print(f"{s:24}" + "".join(f"{by[i]:>16.1f}" if i in by else f"{'':>16}" for i in impls))
PY
