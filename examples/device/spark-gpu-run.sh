#!/usr/bin/env bash
# The second of the two device calls (docs/gpu-scheduling.md, "On GPUs"): Spark local[2] trains Fashion-MNIST
# with device cuda, one barrier task per GPU, NCCL bootstrapped through the driver's rendezvous endpoint
# (RendezvousServer; through BarrierTaskContext.allGather when the run was recorded, and with
# --conf spark.sparktrainer.rendezvous=barrier).
# Call 1 (carry [".device/sched1"]):  xz -dc .device/sched1/part-1.tar.xz | tar -C /tmp/slim -xf -  (mkdir first)
# Call 2 (carry [".device/sched2"]):  bash examples/device/spark-gpu-run.sh
#   (CONFIG=examples/device/fashion-mnist-spark-bf16g.json: bf16 precision and bf16 gradients, Note [bf16 gradients])
# Writes gpus.txt, cmake.log, spark-gpu.log and summary.txt under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/spark-gpu-out}
mkdir -p "$out"
s2=.device/sched2
t0=$(date +%s)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # keep multicast off
[ -x /tmp/slim/jre/bin/java ] || { echo "no /tmp/slim/jre: call 1 (part-1) did not run on this machine" >&2; exit 3; }
xz -dc "$s2/part-2.tar.xz" | tar -C /tmp/slim -xf -
mkdir -p /tmp/st /tmp/st-data
xz -dc "$s2/jars.tar.xz" | tar -C /tmp/st -xf -
[ -d /tmp/st-data/fashion-mnist ] || xz -dc "$s2/fashion-mnist.tar.xz" | tar -C /tmp/st-data -xf -
export JAVA_HOME=/tmp/slim/jre
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"
echo "unpacked in $(( $(date +%s) - t0 )) s"

echo "== cmake: the JNI library (NCCL, cuBLASLt, cuDNN); the kernels' fatbin comes from the jar"
cmake -S native -B /tmp/st-native -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/cmake.log" 2>&1 \
  && cmake --build /tmp/st-native --target sparktrainer_jni >>"$out/cmake.log" 2>&1 \
  || { tail -30 "$out/cmake.log"; exit 4; }
echo "built in $(( $(date +%s) - t0 )) s"

echo "== Spark local[2], device cuda, W=2"
start=$(date +%s)
timeout 400 /tmp/slim/jre/bin/java @/tmp/slim/jvm.opts -Xmx24g -Dspark.ui.enabled=false \
  -Dsparktrainer.jni.path=/tmp/st-native/out/libsparktrainer_jni.so \
  -Dlog4j2.configurationFile=conf/log4j2.properties \
  -cp "/tmp/st/jars/*:/tmp/slim/jars/*" dev.sparktrainer.cli.SparkTrainApp \
  --config "${CONFIG:-examples/device/fashion-mnist-spark.json}" --master 'local[2]' 2>&1 | tee "$out/spark-gpu.log"
rc=${PIPESTATUS[0]}
{
  echo "rc $rc; job wall $(( $(date +%s) - start )) s; call $(( $(date +%s) - t0 )) s"
  cat "$out/gpus.txt"
  grep -E "rank [0-9].*(GPU|device)|GpuSelector|NCCL|nccl|cuda:|test accuracy|epoch|fit ->|training stage GPUs|gradient" "$out/spark-gpu.log" | head -40
  echo "CPU reference (development machine, same job, device cpu):"
  grep -E "test accuracy|wall" "$s2/cpu-run.txt" 2>/dev/null
} | tee "$out/summary.txt"
exit "$rc"
