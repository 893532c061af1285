#!/usr/bin/env bash
# Where does ResNet-50's W=2 step lose time? (benchmarks/results/2026-11-26-diagnostics/README.md) One device
# call, kind nvidia-h100-x2, carry [".device/perf"] (bash benchmarks/gpu/stage.sh first). Ours only (TORCH=0),
# one suite per variant, while nvidia-smi samples SM clock, power and clock-event reasons every 100 ms.
# VARIANTS: ";"-separated "label|worlds|JVM options[|trace[|environment]]" (a 4th field, any word: trace the kernels
# with benchmarks/gpu/cupti and summarize the traces with its analyze.py into trace-summary.txt; TRACE_DUMP=1 also
# brings back the traced windows as trace-windows.tar; the raw trace stays in /tmp/trace-<label>.csv, whose copies
# benchmarks/gpu/cupti/copies.py summarizes; a 5th: environment assignments for ours, e.g.
# NCCL_MAX_CTAS=16), default: W=1 and W=2 as they are, and W=2 with an idle
# NCCL communicator beside two ranks that train apart (-Dsparktrainer.bench.commIdle=true). TESTS=1: the GPU
# tests first. Useful options: -Dsparktrainer.train.timelineLayers=true (the timeline split by layer),
# -Dsparktrainer.bench.bucketsMiB=first,rest (gradient bucket sizes). When nsys is installed (it was not on
# 2026-11-26), NSYS=1 adds a kernel summary (nsys stats cuda_gpu_kern_sum) of a W=1 and a W=2 run.
# Output under $OUT: smi.csv, marks.txt, <label>-run1.json per variant (charts and tables dropped), tests.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/diag-out}
mkdir -p "$out"
export STAGE_DIR=${STAGE_DIR:-.device/perf} BENCHES=${BENCHES:-resnet50} TORCH=0 COMMIT=${COMMIT:-unknown}
VARIANTS=${VARIANTS:-"base|1 2|;idle|2|-Dsparktrainer.bench.commIdle=true"}
q=timestamp,index,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$q --format=csv,noheader -lms 100 > "$out/smi.csv" 2>&1 &
smi=$!
tests=${TESTS:-0}
traces=()
IFS=';' read -ra vs <<< "$VARIANTS"
for v in "${vs[@]}"; do
  IFS='|' read -r label worlds opts trace extra <<< "$v"
  echo "$(date +%T.%N) $label start" >> "$out/marks.txt"
  envs="$extra"
  if [ -n "$trace" ]; then # a kernel trace (benchmarks/gpu/cupti, built into $STAGE_DIR/cupti by stage.sh)
    envs="$envs CUDA_INJECTION64_PATH=$PWD/$STAGE_DIR/cupti/libkernel_trace.so KERNEL_TRACE_OUT=/tmp/trace-$label.csv"
    traces+=("$label=/tmp/trace-$label.csv")
  fi
  TESTS=$tests WORLDS="$worlds" LABEL="$label" BENCH_JAVA_OPTS="$opts" BENCH_ENV="$envs" bash benchmarks/gpu/run-suite.sh 2>&1 \
    | grep -E "nccl-enqueue|junit rc|tests (successful|failed)|\| resnet50 \| [0-9] \| [0-9]|\| mlp \| [0-9] \| [0-9]|\| small-cnn \| [0-9] \| [0-9]|FAIL|Exception|copy.engine" | cut -c1-200
  tests=0
done
echo "$(date +%T.%N) end" >> "$out/marks.txt"
kill $smi
rm -f "$out"/*.png "$out"/*.md
if [ ${#traces[@]} -gt 0 ]; then
  python3 benchmarks/gpu/cupti/analyze.py --window "${TRACE_WINDOW:-2.5}" ${TRACE_DUMP:+--dump /tmp/trace-dump} \
    "${traces[@]}" > "$out/trace-summary.txt" 2>&1
  [ -n "${TRACE_DUMP:-}" ] && tar -C /tmp/trace-dump -cf "$out/trace-windows.tar" .
  cat "$out/trace-summary.txt"
fi
nsys=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ "${NSYS:-0}" = 1 ] && [ -n "$nsys" ]; then
  source "$STAGE_DIR/env.sh"
  cp="$(ls "$STAGE_DIR"/jars/*.jar | tr '\n' ':')"
  for w in 1 2; do
    "$nsys" profile -t cuda -o /tmp/nsys-w$w -f true java -Xmx48g \
      -Dsparktrainer.jni.path=/tmp/st-native-build/out/libsparktrainer_jni.so -Dsparktrainer.cudnn.benchmark=true \
      -cp "$cp" dev.sparktrainer.bench.gpu.GpuBench --world $w --benches resnet50 --out /tmp/nsys-w$w.jsonl \
      --repeats 1 --resnet-batch 256 --resnet-steps 20 > /tmp/nsys-w$w.log 2>&1
    "$nsys" stats -r cuda_gpu_kern_sum -f csv -o /tmp/kern-w$w /tmp/nsys-w$w.nsys-rep > /dev/null 2>&1
    cp /tmp/kern-w${w}_cuda_gpu_kern_sum.csv "$out/nsys-w$w.csv" 2>/dev/null
  done
fi
