#!/usr/bin/env bash
# tsukuru on a GPU beside PyTorch, in one call on the GPU machine.
#
#   bash benches/gpu.sh prepare    # on the build machine: the CUDA build of the binary and of the
#                                  # kernel checks, stripped, and the PyTorch reference, in .bench/gpu
#   bash benches/gpu.sh run        # on the GPU machine, from the repository root with .bench/gpu:
#                                  # checks first, then timings; results in $OUT (default .bench/gpu/out)
#
# `run` builds nothing: it needs the NVIDIA driver and Python with PyTorch (whose CUDA 13 libraries
# the binary loads). In order: the kernel checks against the composite ops (crates/model/tests/
# gpu_kernels.rs); the loss of a small model trained on the CPU in f32 and on the GPU in bf16 from
# the same initialisation; `tsukuru bench train` in bf16 on the reference's GPT-2-small shape
# (12 layers, width 768, vocabulary 32,768, 1,024 positions, batch 32) with MFU against the measured
# bf16 matrix peak; the PyTorch figures (gpu_reference.sh: eager and torch.compile training, batch
# 1 and 64 generation); `tsukuru bench generate` at batch 1 and 64. The table last gives the ratios.
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
  checks=$(cargo test --quiet --release --features cuda -p tsukuru-model --test gpu_kernels --no-run \
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
  out="${OUT:-$dir/out}"
  mkdir -p "$out"
  # The CUDA 13 libraries PyTorch ships (cuBLAS, cuRAND, NVRTC), and the driver's libcuda.
  libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib")))))')
  export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
  for name in tsukuru gpu_kernels; do
    gzip -dc "$dir/$name.gz" > "$out/$name" && chmod +x "$out/$name"
  done
  bin="$out/tsukuru"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  echo "== kernel checks"
  "$out/gpu_kernels" --test-threads 1 2>&1 | tee "$out/checks.txt" | tail -n 15
  echo "== the same small model on the CPU (f32) and the GPU (bf16)"
  small=(--layers 2 --d-model 256 --heads 4 --vocab 4096 --seq 256 --batch 8 --steps 20 --warmup 0)
  "$bin" bench train "${small[@]}" --device cpu --quiet | tee "$out/loss_cpu.json"
  "$bin" bench train "${small[@]}" --device cuda --dtype bfloat16 --quiet | tee "$out/loss_gpu.json"
  echo "== PyTorch (gpu_reference.sh)"
  OUT="$out" bash "$dir/bench/gpu_reference.sh" > "$out/reference.txt" 2>&1 || echo "gpu_reference.sh failed"
  peak=$(python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "bf16_matmul_tflops" in m: print(m["bf16_matmul_tflops"]); break
else: print(0)' "$out/gpu_reference.jsonl")
  echo "== tsukuru"
  shape=(--layers 12 --d-model 768 --heads 12 --vocab 32768)
  "$bin" bench train "${shape[@]}" --device cuda --dtype bfloat16 --seq 1024 --batch 32 --steps 20 \
    --peak-tflops "$peak" --quiet | tee "$out/train.json"
  for b in 1 64; do
    "$bin" bench generate "${shape[@]}" --device cuda --dtype bfloat16 --batch "$b" --prompt 128 \
      --new-tokens 256 --steps 5 --quiet | tee "$out/generate_b$b.json"
  done
  rm -f "$out/tsukuru" "$out/gpu_kernels"  # not worth carrying back
  python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
ref = [json.loads(l) for l in open(os.path.join(out, "gpu_reference.jsonl")) if l.startswith("{")]
def one(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None
def torch(mode, **kw):
    for m in ref:
        if m.get("mode") == mode and all(m.get(k) == v for k, v in kw.items()):
            return m
def ratio(a, b, key):
    return f"{a[key] / b[key]:.2f}x" if a and b and b.get(key) else "n/a"
train = one("train.json")
eager = torch("train", compile=False)
compiled = torch("train", compile=True, tokens_per_step=train and train["tokens_per_step"])
print(f"train tokens/s: tsukuru {train and train['tokens_per_s']}, eager {eager and eager['tokens_per_s']}, "
      f"compile {compiled and compiled['tokens_per_s']}; ratio vs eager {ratio(train, eager, 'tokens_per_s')}, "
      f"vs compile {ratio(train, compiled, 'tokens_per_s')}; MFU {train and train.get('mfu')}; "
      f"peak GiB {train and train.get('peak_mem_gib')} vs {compiled and compiled.get('peak_mem_gib')}")
for b in (1, 64):
    g, t = one(f"generate_b{b}.json"), torch("generate", batch=b)
    key = "tokens_per_s"
    print(f"generate batch {b}: tsukuru {g and g.get(key)}, PyTorch {t and t.get(key)}, ratio {ratio(g, t, key)}")
cpu, gpu = one("loss_cpu.json"), one("loss_gpu.json")
print(f"small model, 20 steps: loss CPU f32 {cpu and cpu['loss_last']}, GPU bf16 {gpu and gpu['loss_last']}")
PY
  ;;
*)
  echo "usage: bash benches/gpu.sh prepare|run" >&2
  exit 2
  ;;
esac
