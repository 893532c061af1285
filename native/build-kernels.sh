#!/usr/bin/env bash
# Compiles native/kernels/kernels.cu into sparktrainer_kernels.fatbin (sm_80, sm_90 + compute_90 PTX).
#
#   native/build-kernels.sh OUT_FILE
#   native/build-kernels.sh --resource-root DIR   (writes DIR/<platform>/cuda<major>/sparktrainer_kernels.fatbin,
#                                                  the jar resource layout NativeLoader searches)
#
# Needs only nvcc (no GPU, no cuBLAS/cuDNN/NCCL headers), so it runs on the development machine too.
# Skips with a message (exit 0) when nvcc is not found, unless SPARKTRAINER_REQUIRE_NVCC=1.
# Rebuilds only when a kernel source is newer than OUT_FILE; writes through a temp file + rename, so
# parallel builds of one checkout never see a half-written fatbin.
set -euo pipefail
usage="usage: build-kernels.sh OUT_FILE | --resource-root DIR"
out=${1:?$usage}
resource_root=
if [ "$out" = "--resource-root" ]; then resource_root=${2:?$usage}; fi
here=$(cd "$(dirname "$0")" && pwd)
src="$here/kernels"

nvcc=${NVCC:-}
if [ -z "$nvcc" ]; then
  for c in "$(command -v nvcc 2>/dev/null || true)" "${CUDA_HOME:-/nonexistent}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then nvcc=$c; break; fi
  done
fi
if [ -z "$nvcc" ]; then
  msg="[spark-trainer] nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin): the CUDA kernels are NOT built and the jar will have no fatbin. Install the CUDA toolkit (nvcc) or set -Dsparktrainer.native.dir at run time (see native/README.md)."
  if [ "${SPARKTRAINER_REQUIRE_NVCC:-0}" = 1 ]; then echo "$msg" >&2; exit 1; fi
  echo "$msg"
  exit 0
fi

if [ -n "$resource_root" ]; then
  major=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p' | head -1)
  os=$(uname -s | tr '[:upper:]' '[:lower:]')
  arch=$(uname -m); [ "$arch" = amd64 ] && arch=x86_64; [ "$arch" = arm64 ] && arch=aarch64
  out="$resource_root/$os-$arch/cuda$major/sparktrainer_kernels.fatbin"
fi

if [ -s "$out" ] && [ -z "$(find "$src" -newer "$out" -type f 2>/dev/null)" ]; then
  echo "[spark-trainer] kernels up to date: $out"
  exit 0
fi

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$nvcc" -fatbin -O3 -std=c++17 --fmad=false \
  -gencode arch=compute_80,code=sm_80 \
  -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90 \
  -o "$tmp" "$src/kernels.cu"
mv -f "$tmp" "$out"
echo "[spark-trainer] built $out with $("$nvcc" --version | tail -1)"
