#!/usr/bin/env bash
# Stages the GPU benchmark suite for one device call (development machine): native/gpu-stage.sh (project
# jars, test jars, runtime, Fashion-MNIST) into $STAGE_DIR (default .device/perf), then compiles
# GpuBench.java against them into $STAGE_DIR/jars/gpu-bench.jar.
# Then: device tool, carry [".device/perf"], command
#   STAGE_DIR=.device/perf COMMIT=<sha> bash benchmarks/gpu/run-suite.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export STAGE_DIR=${STAGE_DIR:-.device/perf}
export BUILD_DIR=${BUILD_DIR:-target-perf}
bash native/gpu-stage.sh --no-baseline
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
javac -d "$tmp" -cp "$(ls "$STAGE_DIR"/jars/*.jar | tr '\n' ':')" $(find benchmarks/gpu/src -name '*.java')
jar cf "$STAGE_DIR/jars/gpu-bench.jar" -C "$tmp" .
bash benchmarks/gpu/cupti/build.sh "$STAGE_DIR/cupti" # the kernel tracer (diag-w2.sh)
du -sh "$STAGE_DIR"
