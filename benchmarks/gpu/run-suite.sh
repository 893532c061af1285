#!/usr/bin/env bash
# The GPU benchmark suite in ONE device call: builds the JNI library, optionally runs the GPU tests, then
# for each W runs ours (GpuBench, W threads of one JVM, one GPU each) and the PyTorch reference
# (torch_ref.py, DDP for W > 1) on the same machine, and summarizes both into JSON + Markdown + PNG.
#
# Prepare here:  bash benchmarks/gpu/stage.sh          (native/gpu-stage.sh + the benchmark jar)
# Device tool:   carry [".device/gpu"], command:
#   COMMIT=<sha> WORLDS="1 2 4" bash benchmarks/gpu/run-suite.sh
# Environment: WORLDS (default: 1 .. number of GPUs, powers of two), BENCHES (mlp,fmnist,allreduce; the CNN
#   benchmarks are selected with BENCHES=small-cnn,resnet50), STEPS (mlp steps per epoch, and small-cnn's
#   CUDNN_BENCHMARK (ours: time the cuDNN algorithms once per shape, as the PyTorch side does; default true),
#   when Fashion-MNIST is missing, 50), REPEATS (measured epochs, 3), SMALL_CNN_REPEATS (small-cnn's measured
#   epochs, both engines, 15: an epoch at W=2 lasts ~34 ms), RESNET_BATCH (resnet50 per-GPU batch,
#   256; lower it when memory forces less), RESNET_STEPS (resnet50 steps per epoch, 20), RUNS (whole suite
#   repeated, 1), TESTS=1 (run the dev.sparktrainer.cuda tests first; TEST_SELECT picks others, e.g.
#   "--select-class dev.sparktrainer.cuda.CudaConvOpsTest"), TEST_TIMEOUT (s, 420), BENCH_TIMEOUT (s per engine
#   and W, 400), PROFILE=1 (ours: phase breakdown of the mlp step), TORCH=0 (skip PyTorch), LABEL,
#   BENCH_JAVA_OPTS (extra JVM options for ours, e.g. -Dsparktrainer.cuda.channelsLast=false), TEST_JAVA_OPTS
#   (the same for the tests, e.g. -Dsparktrainer.cudnn.benchmark=true), BENCH_ENV (environment assignments for
#   ours, e.g. CUDA_INJECTION64_PATH=... for benchmarks/gpu/cupti).
# CNN example (one call, kind nvidia-h100-x2):
#   STAGE_DIR=.device/perf BENCHES=small-cnn,resnet50 WORLDS="1 2" COMMIT=<sha> bash benchmarks/gpu/run-suite.sh
# Output under $OUT: log is the caller's tee; per run <label>-runN.json/.md (+ -throughput.png/-scaling.png
# for run 1); tests.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gpu-suite-out}
mkdir -p "$out"
stage=${STAGE_DIR:-.device/perf}
source "$stage/env.sh"
export PYTHONUNBUFFERED=1
t_start=$(date +%s)
ngpu=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
if [ -z "${WORLDS:-}" ]; then
  WORLDS=1; [ "$ngpu" -ge 2 ] && WORLDS="1 2"; [ "$ngpu" -ge 4 ] && WORLDS="1 2 4"; [ "$ngpu" -ge 8 ] && WORLDS="1 2 4 8"
fi
BENCHES=${BENCHES:-mlp,fmnist,allreduce}
LABEL=${LABEL:-suite}

echo "== build libsparktrainer_jni.so (cmake; the kernels come from the jar)"
build=/tmp/st-native-build
if ! { cmake -S native -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/tmp/cmake.log 2>&1 \
    && cmake --build "$build" --target sparktrainer_jni >>/tmp/cmake.log 2>&1; }; then
  echo "cmake FAILED"; grep -E "error|Error" /tmp/cmake.log | head -30; exit 1
fi
jni="$build/out/libsparktrainer_jni.so"
mkdir -p /tmp/st-data
[ -d /tmp/st-data/fashion-mnist ] || xz -dc "$stage/data/fashion-mnist.tar.xz" | tar -C /tmp/st-data -xf -
cp="$(ls "$stage"/jars/*.jar | tr '\n' ':')"
echo "== ready after $(( $(date +%s) - t_start )) s"

if [ "${TESTS:-0}" = 1 ]; then
  echo "== GPU tests (dev.sparktrainer.cuda)"
  baseline=$(grep -s '^sparktrainer.cpu.accuracy=' "$stage/cpu-baseline.properties" | head -1)
  timeout "${TEST_TIMEOUT:-420}" java -Xmx16g -Dsparktrainer.gpu.required=true -Dsparktrainer.jni.path="$jni" ${TEST_JAVA_OPTS:-} \
    -Dsparktrainer.fmnist.dir=/tmp/st-data/fashion-mnist -Dsparktrainer.gpu.report=/tmp/gpu-test-numbers.txt \
    ${baseline:+-D$baseline} -jar "$stage/junit-platform-console-standalone-1.14.1.jar" execute \
    --class-path "$cp" ${TEST_SELECT:---select-package dev.sparktrainer.cuda} --include-classname '.*Test' \
    --details=summary --disable-banner > /tmp/junit.log 2>&1
  echo "junit rc $?"
  { grep -E "tests (successful|failed|skipped)" /tmp/junit.log; grep -B2 -A12 -E "MethodSource|=> " /tmp/junit.log | head -150;
    cat /tmp/gpu-test-numbers.txt 2>/dev/null; } > "$out/tests.txt"
  grep -E "tests (successful|failed|skipped)" /tmp/junit.log
  grep -E "=> " /tmp/junit.log | head -20
  echo "== tests done after $(( $(date +%s) - t_start )) s"
fi

RUNS=${RUNS:-1}
for run in $(seq 1 "$RUNS"); do
raw=/tmp/raw-$run.jsonl
: > "$raw"
for w in $WORLDS; do
  [ "$w" -gt "$ngpu" ] && { echo "skip W=$w: $ngpu GPUs"; continue; }
  echo "== run $run W=$w ours"
  timeout "${BENCH_TIMEOUT:-400}" env ${BENCH_ENV:-} java -Xmx48g -Dsparktrainer.jni.path="$jni" ${BENCH_JAVA_OPTS:-} \
    -Dsparktrainer.cudnn.benchmark="${CUDNN_BENCHMARK:-true}" -cp "$cp" dev.sparktrainer.bench.gpu.GpuBench \
    --world "$w" --benches "$BENCHES" --fmnist /tmp/st-data/fashion-mnist --out "$raw" \
    --steps "${STEPS:-50}" --repeats "${REPEATS:-3}" --resnet-batch "${RESNET_BATCH:-256}" \
    --resnet-steps "${RESNET_STEPS:-20}" --small-cnn-repeats "${SMALL_CNN_REPEATS:-15}" ${PROFILE:+--profile} 2>&1 \
    | grep -v "^\[gpu-bench\] {"
  if [ "${TORCH:-1}" = 1 ]; then
    echo "== run $run W=$w PyTorch"
    timeout "${BENCH_TIMEOUT:-400}" python3 benchmarks/gpu/torch_ref.py --world "$w" --benches "$BENCHES" \
      --fmnist /tmp/st-data/fashion-mnist --out "$raw" --steps "${STEPS:-50}" --repeats "${REPEATS:-3}" \
      --resnet-batch "${RESNET_BATCH:-256}" --resnet-steps "${RESNET_STEPS:-20}" \
      --small-cnn-repeats "${SMALL_CNN_REPEATS:-15}" 2>&1 | grep -v "^\[torch-ref\] {" | grep -v Warning
  fi
  echo "== run $run W=$w done after $(( $(date +%s) - t_start )) s"
done
# Charts for the first run only (the device tool brings back at most 8 files).
python3 benchmarks/gpu/summarize.py "$raw" --outdir "$out" --commit "${COMMIT:-unknown}" --date "${DATE:-$(date +%F)}" \
  --label "$LABEL-run$run" $([ "$run" -gt 1 ] && echo --no-charts)
done
echo "== suite done after $(( $(date +%s) - t_start )) s"
