#!/usr/bin/env bash
# Builds libkernel_trace.so (kernel_trace.c) into $1 (default .device/perf/cupti), with libcupti.so.13 beside it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-.device/perf/cupti}
cuda=${CUDA_HOME:-/usr/local/cuda-13.0}
mkdir -p "$dest"
inc=$(dirname "$(find "$cuda/" -name cupti.h | head -1)")
lib=$(dirname "$(find "$cuda/" -name 'libcupti.so.13' | head -1)")
gcc -O2 -shared -fPIC -I"$inc" -I"$cuda/include" -o "$dest/libkernel_trace.so" "$here/kernel_trace.c" \
  -L"$lib" -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN' -lpthread
cp -L "$lib/libcupti.so.13" "$dest/"
