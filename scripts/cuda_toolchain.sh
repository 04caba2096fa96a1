#!/usr/bin/env bash
# The CUDA 13.0 compiler and headers, from NVIDIA's wheels on PyPI, for building tsukuru with
# `--features cuda` on a machine without a CUDA toolkit or a GPU (CI checks the GPU build so).
#
#   eval "$(bash scripts/cuda_toolchain.sh [DIR])"     # DIR: default ~/.cache/tsukuru/cuda
#   cargo check --features cuda -p tsukuru-cli
#
# stdout carries only `export` lines; progress and errors go to stderr. The wheels are fetched and
# unpacked once per DIR. Kernels are built for compute capability 90 (H100/H200) unless
# CUDA_COMPUTE_CAP is set. CUDA 13.0 because its PTX is what the r580 driver compiles; nvcc needs
# g++ as its host compiler.
set -euo pipefail

dir="${1:-$HOME/.cache/tsukuru/cuda}"
cap="${CUDA_COMPUTE_CAP:-90}"
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
fail() { echo "cuda_toolchain.sh: $*" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || fail "the wheels hold x86_64 programs; this machine is $(uname -m)"
command -v g++ >/dev/null || fail "nvcc needs g++ as its host compiler: install it (apt-get install g++)"

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
root="$dir/site/nvidia/cu13"
# The marker names the wheel set, so changing a version unpacks afresh.
ready="$dir/ready-$(printf '%s\n' "${wheels[@]}" | sha256sum | cut -c1-12)"
if [ ! -f "$ready" ]; then
  echo "cuda_toolchain.sh: fetching ${#wheels[@]} wheels from PyPI into $dir" >&2
  rm -rf "$dir/wheels" "$dir/site"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir/wheels" "${wheels[@]}" >&2 \
    || fail "pip could not download ${wheels[*]}"
  for wheel in "$dir"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$dir/site" || fail "could not unpack $wheel"
  done
  # Zip archives drop the executable bits that nvcc and its helper programs need.
  find "$root/bin" "$root/nvvm/bin" -maxdepth 1 -type f -exec chmod +x {} +
  "$root/bin/nvcc" --version >&2 || fail "nvcc unpacked in $root does not run"
  rm -rf "$dir/wheels"
  touch "$ready"
fi
echo "export CUDA_HOME='$root' CUDA_PATH='$root' CUDA_ROOT='$root'"
echo "export PATH='$root/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP='$cap' CUDARC_CUDA_VERSION=13000"
