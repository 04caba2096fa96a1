#!/usr/bin/env bash
# The GPU kernels' logic checked on the CPU: the CUDA C of crates/model/src/gpu/cuda compiled as
# C++ for the host (crates/model/tests/cuda_host/host.h runs each block as threads) and compared
# with direct f64 computations. Needs only g++; no CUDA, no GPU. The device tests
# (crates/model/tests/gpu_kernels.rs) remain the word on the GPU itself.
set -euo pipefail
cd "$(dirname "$0")/.."
src=crates/model/src/gpu/cuda
host=crates/model/tests/cuda_host
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-std=c++20 -O2 -fno-strict-aliasing -pthread -w -I "$host" -I "$src" -include "$host/host.h")
for cu in "$src"/*.cu; do
  g++ "${flags[@]}" -x c++ -c "$cu" -o "$out/$(basename "$cu" .cu).o"
done
g++ "${flags[@]}" "$host/check.cc" "$out"/*.o -o "$out/check"
"$out/check"
