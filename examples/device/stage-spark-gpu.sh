#!/usr/bin/env bash
# Stages the real Spark run on the GPU machine (docs/gpu-scheduling.md, "On GPUs"), on the development machine.
# The GPU machine has no Java, Maven or network, and one device call carries at most 64 MiB, so Spark goes in
# two calls (../shared/device/README.md, "Spark itself on the GPU machine"):
#   .device/sched1/part-1.tar.xz   slim Spark, piece 1 (its Java runtime and the larger jars)
#   .device/sched2/part-2.tar.xz   slim Spark, piece 2
#   .device/sched2/jars.tar.xz     spark-trainer (with the CUDA kernels' fatbin) and the jars the slim set lacks:
#                                  spark-mllib (+ -local), JCuda (driver/runtime natives only), netlib BLAS,
#                                  Arrow memory/format, flatbuffers, netty-resolver (the slim set leaves it out;
#                                  Spark's class-artifact loader needs it once a UDF runs, e.g. in transform)
#                                  + mllib-deps-thin.jar (a copy kept in .device/): the classes the job loads
#                                  from jars the slim set lacks (breeze, spire, ... behind spark-mllib's Vectors),
#                                  recorded by the CPU run below
#   .device/sched2/fashion-mnist.tar.xz
#   .device/sched2/cpu-run.txt     the same job with device cpu, run here on the slim runtime (the reference)
# Needs: .device/spark/part-{1,2}.tar.xz from ../shared/device/make-slim-spark.sh (SPARK_VERSION=4.1.0), nvcc
# (for the fatbin), Fashion-MNIST under /usr/share/datasets/fashion-mnist.
# Usage: examples/device/stage-spark-gpu.sh [--no-cpu-run]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${BUILD_DIR:-target-sched}
m2=${M2_REPO:-$HOME/.m2/repository}
s1=.device/sched1
s2=.device/sched2
slim=${SLIM_LOCAL:-/tmp/slim-local}
mkdir -p "$s1" "$s2"
[ -s .device/spark/part-1.tar.xz ] || { echo "run ../shared/device/make-slim-spark.sh first" >&2; exit 1; }
cp .device/spark/part-1.tar.xz "$s1/"
cp .device/spark/part-2.tar.xz "$s2/"

echo "== build ($build, with the kernels' fatbin)"
mvn -q -B -o -Dbuild.dir="$build" -pl spark-trainer compile
mvn -q -B -o -Dbuild.dir="$build" -pl spark-trainer dependency:build-classpath -Dmdep.includeScope=runtime \
  -Dmdep.outputFile="$root/spark-trainer/$build/cp-runtime.txt" >/dev/null
find "spark-trainer/$build/classes" -name sparktrainer_kernels.fatbin | grep -q . || { echo "no fatbin: nvcc?" >&2; exit 1; }

echo "== jars"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/jars"
(cd "spark-trainer/$build/classes" && jar cf0 "$tmp/jars/spark-trainer.jar" .)
# Spark itself and what it brings (Scala, Jackson, Netty, Hadoop client, ...) come from the slim set.
tr ':' '\n' < "spark-trainer/$build/cp-runtime.txt" | grep -E '/(spark-mllib(-local)?_2\.13-|jcuda-12|blas-3|arrow-memory-(core|netty|netty-buffer-patch)-|arrow-format-|flatbuffers-java-|netty-resolver-4)' \
  | grep -v -- '-natives-' | while read -r j; do cp "$j" "$tmp/jars/"; done
nat=$(tr ':' '\n' < "spark-trainer/$build/cp-runtime.txt" | grep 'jcuda-natives' | head -1)
(cd "$tmp" && unzip -q "$nat" 'lib/libJCudaDriver-*' 'lib/libJCudaRuntime-*' && jar cf0 "$tmp/jars/jcuda-natives-slim.jar" lib)
ls -la "$tmp/jars"

echo "== data"
if [ ! -s "$s2/fashion-mnist.tar.xz" ]; then
  if [ -s .device/gpu/data/fashion-mnist.tar.xz ]; then
    cp .device/gpu/data/fashion-mnist.tar.xz "$s2/"
  else
    mkdir -p "$tmp/fashion-mnist"
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
      zcat "/usr/share/datasets/fashion-mnist/$f.gz" > "$tmp/fashion-mnist/$f"
    done
    tar -C "$tmp" -cf - fashion-mnist | xz -9 -T2 > "$s2/fashion-mnist.tar.xz"
  fi
fi

echo "== the same job with device cpu on the slim runtime ($slim): the reference for the GPU run, and the list of"
echo "   classes it loads from jars the slim set lacks (breeze, spire, ... behind spark-mllib's Vectors)"
[ -x "$slim/jre/bin/java" ] || bash .device/spark/unpack.sh .device/spark "$slim"
mkdir -p /tmp/st-data && [ -d /tmp/st-data/fashion-mnist ] || tar -C /tmp/st-data -xJf "$s2/fashion-mnist.tar.xz"
ls "$slim/jars" > "$tmp/slim-jars.txt"
mkdir -p "$tmp/extra"
tr ':' '\n' < "spark-trainer/$build/cp-runtime.txt" | while read -r j; do
  b=$(basename "$j")
  [ -e "$tmp/jars/$b" ] || grep -qx "$b" "$tmp/slim-jars.txt" || [[ $b == jcuda-natives* ]] || cp "$j" "$tmp/extra/"
done
run_job() {  # $1 config, $2 classpath of ours, $3.. extra JVM flags
  local cfg=$1 cp=$2; shift 2
  "$slim/jre/bin/java" @"$slim/jvm.opts" -Xmx6g -Dspark.ui.enabled=false "$@" \
    -Dlog4j2.configurationFile=conf/log4j2.properties -cp "$cp:$slim/jars/*" dev.sparktrainer.cli.SparkTrainApp \
    --config "$cfg" --master 'local[2]'
}
sed 's/"device": "cuda"/"device": "cpu"/' examples/device/fashion-mnist-spark.json > "$tmp/cpu.json"
if [ "${1:-}" != "--no-cpu-run" ] || [ ! -s "$s2/cpu-run.txt" ]; then
  start=$(date +%s)
  run_job "$tmp/cpu.json" "$tmp/jars/*:$tmp/extra/*" -Xlog:class+load=info:file="$tmp/classload.txt" 2>&1 \
    | tee "$s2/cpu-run.txt"
  echo "wall: $(( $(date +%s) - start )) s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))" \
    | tee -a "$s2/cpu-run.txt"
  grep -q '^test accuracy' "$s2/cpu-run.txt" || { echo "the CPU run failed" >&2; exit 1; }
  # Classes loaded from the extra jars -> one thin jar.
  mkdir -p "$tmp/thin"
  for j in "$tmp"/extra/*.jar; do
    grep -F "source: file:$j" "$tmp/classload.txt" | awk '{print $2}' | tr . / | sed 's/$/.class/' > "$tmp/list.txt" || true
    [ -s "$tmp/list.txt" ] && (cd "$tmp/thin" && xargs unzip -q -o "$j" < "$tmp/list.txt")
  done
  (cd "$tmp/thin" && jar cf0 "$root/.device/sched-mllib-deps-thin.jar" .)
fi
cp .device/sched-mllib-deps-thin.jar "$tmp/jars/"
tar -C "$tmp" -cf - jars | xz -9 -T2 > "$s2/jars.tar.xz"
echo "== check: one epoch with the staged jars only"
sed 's/"epochs": 3/"epochs": 1/' "$tmp/cpu.json" > "$tmp/cpu1.json"
run_job "$tmp/cpu1.json" "$tmp/jars/*" > "$tmp/check.txt" 2>&1 || true
grep -E '^test accuracy' "$tmp/check.txt" || { grep -E 'Exception|Error' "$tmp/check.txt" | head -5; echo "the staged jars miss something" >&2; exit 1; }
du -sh "$s1" "$s2" "$s2"/*
