#!/usr/bin/env bash
# The second device call of a ClusterBench run on the GPU machine (stage.sh says how to stage and call it):
# unpacks slim Spark piece 2 and the jars, builds the JNI library with cmake, and runs ClusterBench on
# local[<cores>] with device cuda, one barrier task per GPU (rank r on GPU r: local mode hands tasks no GPU
# resources; the cores generate the synthetic data). Environment: BENCHES (mlp,small-cnn,resnet50), WORLDS
# (1 .. GPUs, powers of two), SCALE (full), EPOCHS (3), COMMIT (recorded in the report), LABEL, TIMEOUT (540 s).
# Writes the report (<date>-<label>-<n>.json/.md/.png), gpus.txt and cluster-bench.log under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../../.."
out=${OUT:-/tmp/cluster-bench-out}
mkdir -p "$out"
st=.device/cbench
t0=$(date +%s)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # keep multicast off
[ -x /tmp/slim/jre/bin/java ] || { echo "no /tmp/slim/jre: call 1 (part-1) did not run on this machine" >&2; exit 3; }
xz -dc "$st/part-2.tar.xz" | tar -C /tmp/slim -xf -
rm -rf /tmp/cb && mkdir -p /tmp/cb
xz -dc "$st/jars.tar.xz" | tar -C /tmp/cb -xf -
export JAVA_HOME=/tmp/slim/jre
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"
ngpu=$(wc -l < "$out/gpus.txt")
if [ -z "${WORLDS:-}" ]; then
  WORLDS=1; [ "$ngpu" -ge 2 ] && WORLDS=1,2; [ "$ngpu" -ge 4 ] && WORLDS=1,2,4; [ "$ngpu" -ge 8 ] && WORLDS=1,2,4,8
fi
echo "== cmake: the JNI library (NCCL, cuBLASLt, cuDNN); the kernels' fatbin comes from the jar"
cmake -S native -B /tmp/cb-native -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/cmake.log" 2>&1 \
  && cmake --build /tmp/cb-native --target sparktrainer_jni >>"$out/cmake.log" 2>&1 \
  || { tail -30 "$out/cmake.log"; exit 4; }
echo "== ready after $(( $(date +%s) - t0 )) s; ClusterBench local[$(nproc)], device cuda, W = $WORLDS"
timeout "${TIMEOUT:-540}" /tmp/slim/jre/bin/java @/tmp/slim/jvm.opts -Xmx48g \
  -Dsparktrainer.jni.path=/tmp/cb-native/out/libsparktrainer_jni.so \
  -Dlog4j2.configurationFile=conf/log4j2.properties \
  -cp "/tmp/cb/jars/*:/tmp/slim/jars/*" dev.sparktrainer.bench.cluster.ClusterBench \
  --master "local[$(nproc)]" --device cuda --benches "${BENCHES:-mlp,small-cnn,resnet50}" --world "$WORLDS" \
  --scale "${SCALE:-full}" --epochs "${EPOCHS:-3}" --out "$out" --commit "${COMMIT:-unknown}" \
  ${LABEL:+--label "$LABEL"} --conf spark.ui.enabled=false 2>&1 | tee "$out/cluster-bench.log" \
  | grep -E '^\[cluster-bench\]|^epoch|^fit ->|Exception|ERROR'
rc=${PIPESTATUS[0]}
echo "rc $rc; call $(( $(date +%s) - t0 )) s"
exit "$rc"
