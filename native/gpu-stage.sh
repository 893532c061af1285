#!/usr/bin/env bash
# Stages everything the GPU machine needs for native/gpu-check.sh into .device/gpu/ (git-ignored), on the
# development machine. The GPU machine has no Java, no Maven and no network; the device tool sends the
# working tree plus the carried paths (64 MiB in all), so what is staged here is kept small:
#   jre.tar.xz   a trimmed Java 17 runtime (jlink; keeps include/jni.h for the JNI build), ~13 MB
#   env.sh       ../shared/device/env.sh, pointed at jre.tar.xz
#   jars/        the project's classes and test classes, and only the runtime jars the GPU tests load
#                (JCuda + its driver/runtime natives only, Jackson, netlib BLAS, slf4j) and the JUnit console
#                launcher (which bundles JUnit itself)
#   data/        Fashion-MNIST, re-packed with xz (the tests unpack it there)
#   cpu-baseline.properties   the CPU reference accuracy of the MLP, measured here (saves GPU-machine time)
#
# Usage: native/gpu-stage.sh [--no-baseline]   (STAGE_DIR=.device/other stages elsewhere; default .device/gpu)
# Then call the device tool with carry [".device/gpu"] and the command `bash native/gpu-check.sh`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${STAGE_DIR:-.device/gpu}
build=${BUILD_DIR:-target-gpu}
m2=${M2_REPO:-$HOME/.m2/repository}
mkdir -p "$out/jars" "$out/data"

echo "== build (mvn, $build)"
mvn -q -B -o -Dbuild.dir="$build" -pl spark-trainer test-compile
mvn -q -B -o -Dbuild.dir="$build" -pl spark-trainer dependency:build-classpath -Dmdep.includeScope=test \
  -Dmdep.outputFile="$root/spark-trainer/$build/cp.txt" >/dev/null
fatbin=$(find "spark-trainer/$build/classes/dev/sparktrainer/native" -name sparktrainer_kernels.fatbin 2>/dev/null | head -1)
[ -n "$fatbin" ] || { echo "no fatbin in the classes folder: is nvcc installed?" >&2; exit 1; }

echo "== jars"
rm -f "$out"/jars/*.jar
(cd "spark-trainer/$build/classes" && jar cf "$root/$out/jars/spark-trainer.jar" .)
(cd "spark-trainer/$build/test-classes" && jar cf "$root/$out/jars/spark-trainer-tests.jar" .)
tr ':' '\n' < "spark-trainer/$build/cp.txt" | grep -E '/(jcuda-12|jackson-(core|databind|annotations)-|blas-3|slf4j-api-)' \
  | grep -v -- '-natives-' | while read -r j; do cp "$j" "$out/jars/"; done
# JCuda's natives jar holds NVRTC/nvPTX compilers we never load (24 MB): keep the driver and runtime only.
nat=$(tr ':' '\n' < "spark-trainer/$build/cp.txt" | grep 'jcuda-natives' | head -1)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && unzip -q "$nat" 'lib/libJCudaDriver-*' 'lib/libJCudaRuntime-*' && jar cf "$root/$out/jars/jcuda-natives-slim.jar" lib)
cp "$m2/org/junit/platform/junit-platform-console-standalone/1.14.1/junit-platform-console-standalone-1.14.1.jar" "$out/" \
  || { echo "run once: mvn dependency:get -Dartifact=org.junit.platform:junit-platform-console-standalone:1.14.1" >&2; exit 1; }
ls -la "$out/jars"

echo "== runtime"
if [ ! -s "$out/jre.tar.xz" ]; then
  jdk=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
  rm -rf "$tmp/jre"
  "$jdk/bin/jlink" --add-modules java.base,jdk.unsupported,java.logging,java.management,java.xml,java.sql,jdk.zipfs \
    --output "$tmp/jre" --strip-debug --no-man-pages --compress=0
  tar -C "$tmp" -cf - jre | xz -9 -T2 > "$out/jre.tar.xz"
fi
sed "s#\.device/jre\.tar\.xz#$out/jre.tar.xz#" "$root/../shared/device/env.sh" > "$out/env.sh"

echo "== data"
fm=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -s "$out/data/fashion-mnist.tar.xz" ]; then
  rm -rf "$tmp/fashion-mnist"; mkdir -p "$tmp/fashion-mnist"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    zcat "$fm/$f.gz" > "$tmp/fashion-mnist/$f"
  done
  tar -C "$tmp" -cf - fashion-mnist | xz -9 -T2 > "$out/data/fashion-mnist.tar.xz"
fi

if [ "${1:-}" != "--no-baseline" ] && [ ! -s "$out/cpu-baseline.properties" ]; then
  echo "== CPU baseline (Fashion-MNIST MLP, 3 epochs; a few minutes on 2 cores)"
  java -Xmx4g -cp "$out/jars/*" dev.sparktrainer.cuda.CudaCpuBaseline "$fm" | tee "$out/cpu-baseline.properties"
fi
du -sh "$out" "$out"/*
