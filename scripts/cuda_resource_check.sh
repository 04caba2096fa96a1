#!/usr/bin/env bash
# The GPU kernels' register and local-memory use, as ptxas reports it for sm_90 (no GPU needed):
# one line per kernel, and a failure when a kernel's local-memory frame exceeds 64 bytes: a
# register array indexed at run time (a loop left rolled) lands there whole, and then every access
# in the hottest loops is a trip through the cache hierarchy. A few spilled registers are ptxas
# trading for occupancy and stay below the limit. Needs nvcc (scripts/cuda_toolchain.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
src=crates/model/src/gpu/cuda
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
limit=64
status=0
for cu in "$src"/*.cu; do
  nvcc --cubin -arch=sm_90 -O3 -std=c++17 -Xptxas -v "$cu" -o "$out/k.cubin" 2> "$out/log"
  # ptxas prints, per entry: "Compiling entry function 'NAME'", then its stack/spill line, then
  # its register line.
  python3 - "$out/log" "$limit" <<'PY' || status=1
import re, sys
text, limit, bad = open(sys.argv[1]).read(), int(sys.argv[2]), 0
for name, body in re.findall(r"Compiling entry function '(\w+)'.*?\n(.*?)(?=Compiling entry|\Z)", text, re.S):
    stack = int(re.search(r"(\d+) bytes stack frame", body).group(1))
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", body))
    regs = int(re.search(r"Used (\d+) registers", body).group(1))
    over = stack > limit
    bad += over
    print(f"{'FAIL' if over else 'ok':4} {name:42} {regs:3} registers, {stack:4} bytes stack, {spill:3} bytes spilled")
sys.exit(1 if bad else 0)
PY
done
exit $status
