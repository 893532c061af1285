#!/usr/bin/env bash
# Compiles and links libsparktrainer_jni.so on a machine WITHOUT the NCCL/cuBLASLt/cuDNN packages (e.g. the
# development machine), against the headers and libraries of NVIDIA's Python wheels, so that a compile error
# is found before a GPU-machine call. The result is not shipped: the GPU machine builds the real library with
# cmake (native/README.md).
#   native/check-jni-build.sh [wheel-dir]    (default /opt/nvw: the unpacked wheels, see below)
# Prepare once (the package index serves them here):
#   pip3 download --no-deps nvidia-cudnn-cu13 nvidia-nccl-cu13 nvidia-cublas -d /tmp/whl
#   python3 -c "import zipfile,glob; [zipfile.ZipFile(w).extractall('/opt/nvw') for w in glob.glob('/tmp/whl/*.whl')]"
set -euo pipefail
cd "$(dirname "$0")"
w=${1:-/opt/nvw}/nvidia
jh=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}
cuda=${CUDA_HOME:-/usr/local/cuda}
for d in "$w/nccl/include" "$w/cudnn/include" "$w/cu13/include" "$cuda/lib64/libcudart_static.a"; do
  [ -e "$d" ] || { echo "missing $d: unpack the wheels first (see the header of this script)" >&2; exit 1; }
done
out=$(mktemp -d)/libsparktrainer_jni.so
g++ -std=c++17 -shared -fPIC -O2 -Wall -Wextra -Wno-unused-parameter -fvisibility=hidden \
  -I"$jh/include" -I"$jh/include/linux" -I"$w/nccl/include" -I"$w/cudnn/include" -I"$w/cu13/include" -I"$cuda/include" \
  jni/sparktrainer_jni.cpp -o "$out" -L"$w/cu13/lib" -L"$w/nccl/lib" -l:libnccl.so.2 -l:libcublasLt.so.13 \
  "$cuda/lib64/libcudart_static.a" -ldl -lpthread -lrt -Wl,--no-undefined
echo "ok: $out ($(nm -D --defined-only "$out" | grep -c ' T Java_') JNI functions)"
