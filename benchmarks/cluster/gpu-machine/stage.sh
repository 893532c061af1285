#!/usr/bin/env bash
# Stages a ClusterBench run on this project's GPU machine (a device call: no Java, Maven or network there, at
# most 64 MiB carried per call), the way examples/device/stage-spark-gpu.sh stages SparkTrainApp: slim Spark
# comes in two calls, piece 1 through .device/sched1 (made by that script) and piece 2 here.
#   .device/cbench/part-2.tar.xz   slim Spark, piece 2 (from .device/spark, ../shared/device/make-slim-spark.sh)
#   .device/cbench/jars.tar.xz     spark-trainer (with the kernels' fatbin), the cluster bench classes, and the
#                                  jars the slim set lacks (spark-mllib, JCuda + its driver/runtime natives,
#                                  netlib BLAS, Arrow memory/format, flatbuffers, netty-resolver, XChart) plus
#                                  cluster-bench-deps-thin.jar: the classes the suite loads from jars the slim set
#                                  lacks (breeze & co behind spark-mllib), recorded by a run of the suite here
# Then checks the staged jars on the slim runtime here (local[2], CPU, tiny). Run afterwards (device tool):
#   1. kind nvidia-h100-x2, carry [".device/sched1"]:  mkdir -p /tmp/slim && xz -dc .device/sched1/part-1.tar.xz | tar -C /tmp/slim -xf -
#   2. same kind, carry [".device/cbench"]:            bash benchmarks/cluster/gpu-machine/run.sh
# --quick: reuse .device/cluster-bench-deps-thin.jar from an earlier run and skip both local runs.
# BUILD_DIR: the Maven output folder to take the classes from (default target); it must have been built with
# nvcc present (the fatbin). SLIM_LOCAL: the slim runtime unpacked here (default /tmp/slim-local).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
build=${BUILD_DIR:-target}
slim=${SLIM_LOCAL:-/tmp/slim-local}
st=.device/cbench
[ -s .device/spark/part-2.tar.xz ] || { echo "no .device/spark/part-2.tar.xz: run ../shared/device/make-slim-spark.sh" >&2; exit 1; }
find "spark-trainer/$build/classes" -name sparktrainer_kernels.fatbin | grep -q . || { echo "no fatbin in spark-trainer/$build (nvcc?)" >&2; exit 1; }
[ -d "benchmarks/$build/classes/dev/sparktrainer/bench/cluster" ] || { echo "build benchmarks into $build first" >&2; exit 1; }
mkdir -p "$st"
cp .device/spark/part-2.tar.xz "$st/"
mvn -q -B -o -Dbuild.dir="$build" -pl benchmarks dependency:build-classpath -Dmdep.includeScope=runtime \
  -Dmdep.outputFile="$root/benchmarks/$build/cp-runtime.txt" >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/jars"
(cd "spark-trainer/$build/classes" && jar cf0 "$tmp/jars/spark-trainer.jar" .)
(cd "benchmarks/$build/classes" && jar cf0 "$tmp/jars/cluster-bench.jar" dev/sparktrainer/bench/cluster)
tr ':' '\n' < "benchmarks/$build/cp-runtime.txt" | grep -E '/(spark-mllib(-local)?_2\.13-|jcuda-12|blas-3|arrow-memory-(core|netty|netty-buffer-patch)-|arrow-format-|flatbuffers-java-|netty-resolver-4|xchart-)' \
  | grep -v -- '-natives-' | while read -r j; do cp "$j" "$tmp/jars/"; done
nat=$(tr ':' '\n' < "benchmarks/$build/cp-runtime.txt" | grep 'jcuda-natives' | head -1)
(cd "$tmp" && unzip -q "$nat" 'lib/libJCudaDriver-*' 'lib/libJCudaRuntime-*' && jar cf0 "$tmp/jars/jcuda-natives-slim.jar" lib)
[ -x "$slim/jre/bin/java" ] || bash .device/spark/unpack.sh .device/spark "$slim"
bench() {  # $1 classpath of ours, $2 label, $3.. extra JVM flags
  local cp=$1 label=$2; shift 2
  "$slim/jre/bin/java" @"$slim/jvm.opts" -Xmx4g "$@" -Dlog4j2.configurationFile=conf/log4j2.properties \
    -cp "$cp:$slim/jars/*" dev.sparktrainer.bench.cluster.ClusterBench --master 'local[2]' --scale tiny \
    --device cpu --world 1,2 --benches mlp,small-cnn,resnet50 --epochs 2 --rows-per-worker 64 --batch 8 \
    --out "$tmp/out" --label "$label" --conf spark.ui.enabled=false
}
thin=.device/cluster-bench-deps-thin.jar
if [ "${1:-}" != "--quick" ] || [ ! -s "$thin" ]; then
  echo "== the suite on the slim runtime here with every runtime jar it lacks, recording the classes loaded from them"
  mkdir -p "$tmp/extra"
  ls "$slim/jars" > "$tmp/slim-jars.txt"
  tr ':' '\n' < "benchmarks/$build/cp-runtime.txt" | while read -r j; do
    b=$(basename "$j")
    [ -e "$tmp/jars/$b" ] || grep -qx "$b" "$tmp/slim-jars.txt" || [[ $b == jcuda-natives* ]] || cp "$j" "$tmp/extra/"
  done
  bench "$tmp/jars/*:$tmp/extra/*" slim-record -Xlog:class+load=info:file="$tmp/classload.txt" > "$tmp/record.log" 2>&1 \
    || { grep -E 'Exception|Error' "$tmp/record.log" | head -10; exit 1; }
  mkdir -p "$tmp/thin"
  for j in "$tmp"/extra/*.jar; do
    grep -F "source: file:$j" "$tmp/classload.txt" | awk '{print $2}' | tr . / | sed 's/$/.class/' > "$tmp/list.txt" || true
    [ -s "$tmp/list.txt" ] && (cd "$tmp/thin" && xargs unzip -q -o "$j" < "$tmp/list.txt")
  done
  (cd "$tmp/thin" && jar cf0 "$root/$thin" .)
fi
cp "$thin" "$tmp/jars/cluster-bench-deps-thin.jar"
tar -C "$tmp" -cf - jars | xz -9 -T2 > "$st/jars.tar.xz"
if [ "${1:-}" != "--quick" ]; then
  echo "== check: the same with the staged jars only"
  bench "$tmp/jars/*" slim-check > "$tmp/check.log" 2>&1 || { grep -E 'Exception|Error' "$tmp/check.log" | head -10; exit 1; }
  grep '^\[cluster-bench\]' "$tmp/check.log" | grep -E 'samples/s|report'
fi
du -sh "$st" "$st"/*
