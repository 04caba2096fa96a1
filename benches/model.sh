#!/usr/bin/env bash
# Model benchmark: `tsukuru bench train|generate` against the PyTorch reference on the same model,
# side by side in one run, with the ratio printed.
#
#   bash benches/model.sh [--rounds N] [FLAGS...]     e.g. --layers 12, --threads 2, --steps 20
#
# FLAGS go to both sides unchanged (they share the reference's flags: --vocab --layers --d-model
# --heads --kv-heads --ffn --seq --batch --prompt --new-tokens --steps --warmup --threads --device).
# Training uses FLAGS as given; generation runs batch 1 (a 16-token prompt, 128 new tokens by default).
# Each mode runs N rounds (default 3) of tsukuru then PyTorch back to back, so that a machine whose
# speed drifts over minutes moves both sides of a pair alike; the table gives every round's ratio
# and their median.
# The reference script is ../shared/bench/torch_ref.py beside the project, or $TORCH_REF.
# PyTorch is installed into a cached virtualenv on first use (a large download).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    *) flags+=("$1"); shift ;;
  esac
done
if ! [ "$rounds" -ge 1 ] 2>/dev/null; then
  echo "benches/model.sh: --rounds takes a whole number ≥ 1, got '$rounds'" >&2
  exit 2
fi
ref="${TORCH_REF:-../shared/bench/torch_ref.py}"
if [ ! -f "$ref" ]; then
  echo "benches/model.sh: the PyTorch reference $ref is missing; set TORCH_REF=path/to/torch_ref.py" >&2
  exit 2
fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release -p tsukuru-cli
bin="$target/release/tsukuru"
source benches/torch_venv.sh

out=".bench/model"
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
# Peak resident memory of the reference, measured from outside (it does not report it on CPU).
rss_of() { /usr/bin/env python3 -c '
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1), file=sys.stderr)' "$@"; }
for mode in train generate; do
  extra=()
  [ "$mode" = generate ] && extra=(--batch 1)
  for round in $(seq "$rounds"); do
    "$bin" bench "$mode" "${flags[@]}" "${extra[@]}" \
      | python3 -c 'import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); d["round"]=int(sys.argv[1]); print(json.dumps(d))' "$round" \
      | tee -a "$results"
    rss=$(rss_of "$venv/bin/python" "$ref" "$mode" "${flags[@]}" "${extra[@]}" 2>&1 >"$out/torch.json" | tail -1)
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["impl"]="pytorch"; d["peak_rss_mib"]=float(sys.argv[2]); d["round"]=int(sys.argv[3]); print(json.dumps(d))' \
      "$out/torch.json" "$rss" "$round" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["mode"], r["impl"], r["round"]): r for r in rows}
rounds = sorted({r["round"] for r in rows})
print()
print(f"{'':10} {'round':>5} {'tsukuru tok/s':>14} {'PyTorch tok/s':>14} {'speed ratio':>12} {'RSS ratio':>10}")
for mode in ("train", "generate"):
    speed, memory = [], []
    for n in rounds:
        t, p = by[(mode, "tsukuru", n)], by[(mode, "pytorch", n)]
        speed.append(t["tokens_per_s"] / p["tokens_per_s"])
        memory.append(t["peak_rss_mib"] / p["peak_rss_mib"] if p.get("peak_rss_mib") else float("nan"))
        print(f"{mode:10} {n:>5} {t['tokens_per_s']:>14.1f} {p['tokens_per_s']:>14.1f} {speed[-1]:>11.2f}x {memory[-1]:>9.2f}x")
    print(f"{mode:10} {'median':>5} {'':>14} {'':>14} {statistics.median(speed):>11.2f}x {statistics.median(memory):>9.2f}x")
PY
