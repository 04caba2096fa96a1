#!/usr/bin/env bash
# tsukuru on a GPU beside PyTorch, in one call on the GPU machine.
#
#   bash benches/gpu.sh prepare    # on the build machine: the CUDA build of the binary and of the
#                                  # kernel checks, stripped, and the PyTorch reference, in .bench/gpu
#   bash benches/gpu.sh run        # on the GPU machine, from the repository root with .bench/gpu:
#                                  # checks first, then timings; every file in .bench/gpu/out, the
#                                  # table in its summary.txt; with OUT set, both packed there too
#                                  # (gpu_results.tar.gz and summary.txt)
#
# `run` builds nothing: it needs the NVIDIA driver and Python with PyTorch (whose CUDA 13 libraries
# the binary loads). In order: the kernel checks against the composite ops (crates/model/tests/
# gpu_kernels.rs); the loss of a small model trained on the CPU in f32 and on the GPU in bf16 from
# the same initialisation; `tsukuru bench train` in bf16 on the reference's GPT-2-small shape
# (12 layers, width 768, vocabulary 32,768, 1,024 positions, batch 32); `tsukuru bench generate` at
# batch 1 and 64 and PyTorch's generation; the PyTorch figures (gpu_reference.sh: the bf16 matrix
# peak, eager and torch.compile training, generation); then diagnostics: training with each block's
# halves as separate graph nodes (TSUKURU_KERNELS=separate), and with a node per half and candle's
# products (TSUKURU_KERNELS=halves TSUKURU_MATMUL=candle), the step's matrix products and causal
# attention on their own beside PyTorch's (bench matmul, benches/matmul_peer.py), where Nsight
# Compute reads the counters each kernel's time in one step, and where compute-sanitizer works its
# memcheck and racecheck over the kernel checks. Each step's time limit
# is cut to what is left of GPU_RUN_SECONDS (560), so a call limited to 600 s ends with the table:
# the ratios and the MFU against the peak measured in the same call.
# The reference files come from ../shared/bench beside the project, or $TORCH_REF_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.bench/gpu
case "${1:-}" in
prepare)
  ref="${TORCH_REF_DIR:-../shared/bench}"
  for f in torch_ref.py gpu_reference.sh gpu_ceilings.py; do
    [ -f "$ref/$f" ] || { echo "benches/gpu.sh: $ref/$f is missing; set TORCH_REF_DIR" >&2; exit 2; }
  done
  eval "$(CUDA_LINK=1 bash scripts/cuda_toolchain.sh)"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tsukuru/target-cuda}"
  cargo build --quiet --release --features cuda -p tsukuru-cli
  # With the CLI in the package set, the checks share its dependency build (features unify as
  # for the binary); for tsukuru-model alone cargo would build candle a second time.
  checks=$(cargo test --quiet --release --features cuda -p tsukuru-cli -p tsukuru-model --test gpu_kernels --no-run \
    --message-format=json | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_kernels":
        print(m["executable"])')
  rm -rf "$dir" && mkdir -p "$dir/bench"
  # Stripped and gzipped: about 17 MB each instead of 50 (candle's kernels are PTX text), which
  # keeps both under what a call to the GPU machine carries.
  for pair in "$CARGO_TARGET_DIR/release/tsukuru:tsukuru" "$checks:gpu_kernels"; do
    strip -o "$dir/${pair##*:}" "${pair%%:*}"
    gzip -6 "$dir/${pair##*:}"
  done
  cp "$ref/torch_ref.py" "$ref/gpu_reference.sh" "$ref/gpu_ceilings.py" "$dir/bench/"
  du -sh "$dir"/* >&2
  ;;
run)
  # Every step runs even if an earlier one fails (one call should bring back all it can), each
  # under a time limit; the checks' verdict heads the table.
  set +e
  # Every step's time limit is cut to what is left before the deadline (the call's own limit less
  # a margin for the table), so the essential figures come first and the diagnostics last.
  deadline=$(( SECONDS + ${GPU_RUN_SECONDS:-560} ))
  limit() { local left=$(( deadline - SECONDS )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
  # Every file of the run lands in one folder; with OUT set (a folder that whoever runs this
  # collects), the folder is also packed into one archive there beside the table, so a caller
  # that brings back only a few files still gets every log.
  out="$dir/out"
  rm -rf "$out" "$dir/bin" && mkdir -p "$out" "$dir/bin"
  # The CUDA 13 libraries PyTorch ships (cuBLAS, cuRAND, NVRTC), and the driver's libcuda.
  libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib")))))')
  export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
  for name in tsukuru gpu_kernels; do
    gzip -dc "$dir/$name.gz" > "$dir/bin/$name" && chmod +x "$dir/bin/$name"
  done
  bin="$dir/bin/tsukuru"
  # step FILE SECONDS COMMAND...: runs COMMAND under its share of the time, appends its standard
  # output to FILE (and shows it) and its standard error to FILE.err; a failure shows the
  # exit status and the error's last lines.
  step() {
    local file=$1 secs=$2 rc
    shift 2
    timeout "$(limit "$secs")" "$@" > "$out/.step" 2>> "$out/$file.err"
    rc=$?
    tee -a "$out/$file" < "$out/.step"
    if (( rc != 0 )); then
      echo "$file: exit $rc"
      tail -n 5 "$out/$file.err"
    fi
    rm -f "$out/.step"
  }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  echo "== kernel checks"
  timeout "$(limit 180)" "$dir/bin/gpu_kernels" --test-threads 1 > "$out/checks.txt" 2>&1
  echo "exit $?" >> "$out/checks.txt"
  tail -n 4 "$out/checks.txt"
  echo "== the same small model on the CPU (f32) and the GPU (bf16)"
  small=(--layers 2 --d-model 256 --heads 4 --vocab 4096 --seq 256 --batch 8 --steps 20 --warmup 0 --quiet)
  step loss_cpu.json 120 "$bin" bench train "${small[@]}" --device cpu
  step loss_gpu.json 120 "$bin" bench train "${small[@]}" --device cuda --dtype bfloat16
  echo "== tsukuru"
  shape=(--layers 12 --d-model 768 --heads 12 --vocab 32768 --device cuda --dtype bfloat16 --quiet)
  step train.json 240 "$bin" bench train "${shape[@]}" --seq 1024 --batch 32 --steps 20
  for b in 1 64; do
    step "generate_b$b.json" 180 "$bin" bench generate "${shape[@]}" --batch "$b" --prompt 128 --new-tokens 256 --steps 5
  done
  # PyTorch's generation first, as gpu_reference.sh runs it (it comes last there, after a long
  # compiled run that a time limit may cut short).
  for b in 1 64; do
    step gpu_reference.jsonl 120 python3 "$dir/bench/torch_ref.py" generate --device cuda --dtype bfloat16 --layers 12 \
      --d-model 768 --heads 12 --vocab 32768 --batch "$b" --prompt 128 --new-tokens 256 --steps 5
  done
  echo "== PyTorch (gpu_reference.sh)"
  OUT="$out" timeout "$(limit 420)" bash "$dir/bench/gpu_reference.sh" > "$out/reference.txt" 2>&1 || echo "gpu_reference.sh failed"
  echo "== tsukuru with each block's halves as separate graph nodes (what the single nodes save)"
  step train_separate.json 240 env TSUKURU_KERNELS=separate "$bin" bench train "${shape[@]}" --seq 1024 --batch 32 --steps 10
  echo "== tsukuru with a graph node per block half and candle's products (what the block stack and cuBLASLt save)"
  step train_halves.json 150 env TSUKURU_KERNELS=halves TSUKURU_MATMUL=candle "$bin" bench train "${shape[@]}" \
    --seq 1024 --batch 32 --steps 10
  echo "== products and attention on their own (tsukuru, then PyTorch)"
  step matmul.jsonl 90 "$bin" bench matmul --device cuda --dtype bfloat16 --repeat 5
  step matmul.jsonl 90 python3 benches/matmul_peer.py --device cuda --dtype bfloat16 --repeat 5
  # Where the time of a step goes, kernel by kernel: Nsight Compute's duration of every kernel of
  # one training step at the reference shape (one counter pass, so no replay; clocks left as they
  # are). It reads the counters only on some of these machines; the table sums it per kernel name.
  if command -v ncu > /dev/null; then
    echo "== kernel times of one step (ncu)"
    timeout "$(limit 120)" ncu --clock-control none --metrics gpu__time_duration.sum --csv \
      "$bin" bench train "${shape[@]}" --seq 1024 --batch 32 --steps 1 --warmup 0 > "$out/ncu.csv" 2> "$out/ncu.log"
    tail -n 2 "$out/ncu.log"
  fi
  # Last, where the GPU's tools allow it: out-of-bounds accesses and shared-memory races in the
  # kernels (compute-sanitizer runs only on some of these machines; each tool under a time limit).
  if command -v compute-sanitizer > /dev/null; then
    echo "== compute-sanitizer"
    timeout "$(limit 150)" compute-sanitizer --tool memcheck "$dir/bin/gpu_kernels" --test-threads 1 > "$out/memcheck.txt" 2>&1
    timeout "$(limit 120)" compute-sanitizer --tool racecheck "$dir/bin/gpu_kernels" --test-threads 1 attention \
      > "$out/racecheck.txt" 2>&1
    grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|Device not supported" "$out/memcheck.txt" "$out/racecheck.txt"
  fi
  rm -rf "$dir/bin"
  python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, os, sys
out = sys.argv[1]
def lines(name):
    try:
        return [json.loads(l) for l in open(os.path.join(out, name)) if l.startswith("{")]
    except OSError:
        return []
def one(name):
    found = lines(name)
    return found[-1] if found else None
ref = lines("gpu_reference.jsonl")
def torch(mode, **kw):
    for m in ref:
        if m.get("mode") == mode and all(m.get(k) == v for k, v in kw.items()):
            return m
def ratio(a, b, key="tokens_per_s"):
    return f"{a[key] / b[key]:.2f}x" if a and b and a.get(key) and b.get(key) else "n/a"
checks = open(os.path.join(out, "checks.txt")).read() if os.path.exists(os.path.join(out, "checks.txt")) else ""
print("kernel checks:", "passed" if "test result: ok" in checks and "exit 0" in checks else "FAILED or missing (checks.txt)")
peak = next((m["bf16_matmul_tflops"] for m in ref if "bf16_matmul_tflops" in m), None)
train = one("train.json")
if not train:
    # The main run failed: the headline figures from the run without the block stack and cuBLASLt,
    # or with each block's halves as separate ops, so the call still says where the path stands.
    for name in ("train_halves.json", "train_separate.json"):
        train = one(name)
        if train:
            print(f"WARNING: train.json is missing; the training figures below are {name}'s")
            break
eager, compiled = torch("train", compile=False), torch("train", compile=True)
mfu = "n/a"
if train and peak:
    flops = 6 * train["params_nonemb"] + 12 * 12 * 768 * 1024
    mfu = f"{train['tokens_per_s'] * flops / (peak * 1e12):.3f}"
print(f"train tokens/s: tsukuru {train and train['tokens_per_s']}, PyTorch eager {eager and eager['tokens_per_s']}, "
      f"compile {compiled and compiled['tokens_per_s']}; vs eager {ratio(train, eager)}, vs compile "
      f"{ratio(train, compiled)}; MFU {mfu} (peak {peak} TFLOP/s), PyTorch compile MFU {compiled and compiled.get('mfu')}")
print(f"peak GiB: tsukuru {train and train.get('peak_mem_gib')}, PyTorch compile {compiled and compiled.get('peak_mem_gib')}; "
      f"products cuBLASLt refused: {train and train.get('matmul_fallbacks')}")
separate = one("train_separate.json")
print(f"block halves as one node each: {train and train['tokens_per_s']} tokens/s, as separate ops "
      f"{separate and separate['tokens_per_s']} ({ratio(train, separate)}); peak GiB {train and train.get('peak_mem_gib')} "
      f"vs {separate and separate.get('peak_mem_gib')}")
halves = one("train_halves.json")
print(f"block stack and cuBLASLt products: {train and train['tokens_per_s']} tokens/s, a node per half and candle's "
      f"products {halves and halves['tokens_per_s']} ({ratio(train, halves)}); peak GiB {train and train.get('peak_mem_gib')} "
      f"vs {halves and halves.get('peak_mem_gib')}")
if train and train.get("forward_s") is not None:
    rest = train["step_s"] - train["forward_s"] - train["backward_s"]
    print(f"tsukuru step {train['step_s']} s: forward {train['forward_s']} s, backward and norm {train['backward_s']} s, "
          f"update and the rest {rest:.5f} s")
for b in (1, 64):
    g, t = one(f"generate_b{b}.json"), torch("generate", batch=b)
    print(f"generate batch {b}: tsukuru {g and g.get('tokens_per_s')}, PyTorch {t and t.get('tokens_per_s')}, {ratio(g, t)}")
for shape in dict.fromkeys(m["shape"] for m in lines("matmul.jsonl")):
    by = {m["impl"]: m["gflops"] / 1e3 for m in lines("matmul.jsonl") if m["shape"] == shape}
    mine, theirs = by.get("tsukuru-fused", by.get("candle")), by.get("pytorch")
    ratio_s = f"{mine / theirs:.2f}x" if mine and theirs else "n/a"
    print(f"{shape}: TFLOP/s tsukuru {mine and round(mine, 1)}, PyTorch {theirs and round(theirs, 1)}, {ratio_s}")
cpu, gpu = one("loss_cpu.json"), one("loss_gpu.json")
print(f"small model, 20 steps from one initialisation: loss CPU f32 {cpu and cpu['loss_last']}, GPU bf16 {gpu and gpu['loss_last']}")
# ncu's CSV: one row per kernel launch and metric; durations summed per kernel name.
import csv
unit = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0}
total = {}
try:
    rows = csv.DictReader(l for l in open(os.path.join(out, "ncu.csv")) if l.startswith('"'))
    for r in rows:
        if r.get("Metric Name") == "gpu__time_duration.sum":
            name = r["Kernel Name"].split("(")[0][:60]
            total[name] = total.get(name, 0.0) + float(r["Metric Value"].replace(",", "")) * unit.get(r["Metric Unit"], 1e-9)
except (OSError, ValueError, KeyError):
    pass
if total:
    whole = sum(total.values())
    print(f"kernel time of one step and its set-up (ncu): {whole * 1e3:.1f} ms over {len(total)} kernels; the largest:")
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:20]:
        print(f"  {t * 1e3:8.2f} ms {100 * t / whole:5.1f}%  {name}")
PY
  find "$out" -name '*.err' -empty -delete
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && tar -czf "$OUT/gpu_results.tar.gz" -C "$out" . && cp "$out/summary.txt" "$OUT/"
  fi
  ;;
*)
  echo "usage: bash benches/gpu.sh prepare|run" >&2
  exit 2
  ;;
esac
