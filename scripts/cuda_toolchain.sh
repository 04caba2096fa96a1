#!/usr/bin/env bash
# The CUDA 13.0 compiler and headers, from NVIDIA's wheels on PyPI, for building tsukuru with
# `--features cuda` on a machine without a CUDA toolkit or a GPU (CI checks the GPU build so).
#
#   eval "$(bash scripts/cuda_toolchain.sh [DIR])"     # DIR: default ~/.cache/tsukuru/cuda
#   cargo check --features cuda -p tsukuru-cli
#
# With CUDA_LINK=1 it also fetches the libraries a binary links (cuBLAS, cuRAND, NVRTC) and builds
# a link-time stand-in for the driver's libcuda.so.1 (every cu* entry of cuda.h, soname
# libcuda.so.1), so `cargo build --features cuda` links here; the binary then runs on a GPU
# machine against its driver. The stand-in is never shipped.
#
# stdout carries only `export` lines; progress and errors go to stderr. The wheels are fetched and
# unpacked once per DIR. Kernels are built for compute capability 90 (H100/H200) unless
# CUDA_COMPUTE_CAP is set. CUDA 13.0 because its PTX is what the r580 driver compiles; nvcc needs
# g++ as its host compiler.
set -euo pipefail

# A toolchain for linking lives apart, so the lighter one CI uses stays as it is.
default="$HOME/.cache/tsukuru/cuda"
[ "${CUDA_LINK:-0}" = 1 ] && default="$default-link"
dir="${1:-$default}"
cap="${CUDA_COMPUTE_CAP:-90}"
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
if [ "${CUDA_LINK:-0}" = 1 ]; then
  # The versions the GPU machine's PyTorch (2.11, CUDA 13.0) ships, so the binary finds them there.
  wheels+=(nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)
fi
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
  if [ "${CUDA_LINK:-0}" = 1 ]; then
    # Unversioned names for the linker, and the driver stand-in.
    mkdir -p "$root/lib64/stubs"
    for lib in "$root"/lib/lib*.so.*; do
      name="$(basename "$lib")"
      ln -sfn "../lib/$name" "$root/lib64/${name%%.so.*}.so"
    done
    stub="$dir/libcuda_stub.c"
    for variant in "" -D__CUDA_API_VERSION_INTERNAL -DCUDA_API_PER_THREAD_DEFAULT_STREAM; do
      gcc -E -P $variant -I "$root/include" "$root/include/cuda.h"
    done | grep -oE '\bcu[A-Za-z0-9_]+[[:space:]]*\(' | tr -d '( \t' | LC_ALL=C sort -u \
      | sed 's/.*/int &(void) { return 999; }/' > "$stub"
    [ "$(wc -l < "$stub")" -gt 400 ] || fail "too few cu* entries found in $root/include/cuda.h"
    gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$stub" >&2
    # candle's kernels through nvcc with compressed fat binaries: half the binary's size.
    printf '#!/usr/bin/env bash\n[[ " $* " == *" -c "* ]] && exec "%s/nvcc" --compress-mode=size "$@"\nexec "%s/nvcc" "$@"\n' \
      "$root/bin" "$root/bin" > "$root/bin/nvcc-compress"
    chmod +x "$root/bin/nvcc-compress"
  fi
  touch "$ready"
fi
echo "export CUDA_HOME='$root' CUDA_PATH='$root' CUDA_ROOT='$root'"
echo "export PATH='$root/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP='$cap' CUDARC_CUDA_VERSION=13000"
if [ "${CUDA_LINK:-0}" = 1 ]; then
  echo "export LIBRARY_PATH='$root/lib64:$root/lib64/stubs' NVCC='$root/bin/nvcc-compress'"
fi
