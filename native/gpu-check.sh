#!/usr/bin/env bash
# Everything the GPU engine must show, in ONE device call (native/README.md):
#   1. builds native/ with cmake (fatbin + libsparktrainer_jni.so against NCCL/cuBLASLt/cuDNN there);
#   2. runs the GPU tests (dev.sparktrainer.cuda.*) with the JUnit console launcher, GPU required
#      (a missing GPU or JNI library fails instead of skipping);
#   3. prints a summary; writes logs and reports under $OUT (or /tmp/gpu-check-out when OUT is unset).
# Prepare on the development machine with native/gpu-stage.sh, then call the device tool with
#   carry [".device/gpu"], kind nvidia-h100-x2 (2 GPUs), command: bash native/gpu-check.sh [JUnit selectors...]
# Default selection: the whole package. E.g. `bash native/gpu-check.sh --select-class dev.sparktrainer.cuda.CudaOpsTest`.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check-out}
mkdir -p "$out"
stage=${STAGE_DIR:-.device/gpu}
t_start=$(date +%s)
source "$stage/env.sh"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"

echo "== cmake build of native/"
build=/tmp/st-native-build
cmake -S native -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/cmake.log" 2>&1 \
  && cmake --build "$build" >>"$out/cmake.log" 2>&1
cmake_rc=$?
tail -5 "$out/cmake.log"
ls -la "$build/out" 2>/dev/null
if [ $cmake_rc -ne 0 ]; then
  echo "cmake FAILED (rc $cmake_rc); see cmake.log. Errors:"; grep -E "error|Error" "$out/cmake.log" | head -30
fi

echo "== data"
mkdir -p /tmp/st-data
[ -d /tmp/st-data/fashion-mnist ] || xz -dc "$stage/data/fashion-mnist.tar.xz" | tar -C /tmp/st-data -xf -
baseline=$(grep -s '^sparktrainer.cpu.accuracy=' "$stage/cpu-baseline.properties" | head -1)

echo "== GPU tests"
selectors=("$@")
[ ${#selectors[@]} -eq 0 ] && selectors=(--select-package dev.sparktrainer.cuda)
report="$out/gpu-test-numbers.txt"
: > "$report"
# The kernels come from the jar (the fatbin the development machine's Maven build compiled: the shipping
# path); only the JNI library comes from the cmake build. A second, short run below loads the cmake fatbin.
timeout 480 java -Xmx16g \
  -Dsparktrainer.gpu.required=true \
  -Dsparktrainer.jni.path="$build/out/libsparktrainer_jni.so" \
  -Dsparktrainer.fmnist.dir=/tmp/st-data/fashion-mnist \
  -Dsparktrainer.gpu.report="$report" \
  ${baseline:+-D$baseline} \
  -jar "$stage/junit-platform-console-standalone-1.14.1.jar" execute \
  --class-path "$(ls "$stage"/jars/*.jar | tr '\n' ':')" \
  "${selectors[@]}" --include-classname '.*Test' \
  --details=tree --disable-banner --reports-dir="$out/junit" 2>&1 | tee "$out/junit.log"
rc=${PIPESTATUS[0]}

if [ $# -eq 0 ]; then
  echo "== the cmake-built fatbin (override folder) with CudaMemoryTest"
  timeout 60 java -Dsparktrainer.gpu.required=true -Dsparktrainer.native.dir="$build/out" \
    -Dsparktrainer.gpu.report="$report" \
    -jar "$stage/junit-platform-console-standalone-1.14.1.jar" execute \
    --class-path "$(ls "$stage"/jars/*.jar | tr '\n' ':')" --select-class dev.sparktrainer.cuda.CudaMemoryTest \
    --details=summary --disable-banner > "$out/junit-cmake-fatbin.log" 2>&1
  rc2=$?
  echo "cmake fatbin run: rc $rc2 ($(grep -E 'tests successful' "$out/junit-cmake-fatbin.log" | xargs))"
  rc=$(( rc != 0 ? rc : rc2 ))
fi

echo "== summary ($(( $(date +%s) - t_start )) s; cmake rc $cmake_rc; junit rc $rc)"
cat "$out/gpus.txt"
cat "$report"
grep -E "tests (successful|failed|skipped|aborted)" "$out/junit.log"
exit $(( rc != 0 || cmake_rc != 0 ))
