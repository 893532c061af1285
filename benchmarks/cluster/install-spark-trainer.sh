#!/usr/bin/env bash
# Databricks cluster init script for the cluster benchmark jobs (benchmarks/cluster/databricks-*gpu*.json):
# puts the GPU discovery script and the JNI library (libsparktrainer_jni.so, built by cmake from native/ for the
# runtime's CUDA, see native/README.md) where the jobs' spark_conf expects them, on every node, before Spark
# starts. Upload it, conf/gpu-discovery.sh and the library to the artifacts volume (README.md, "Databricks").
set -euo pipefail
src=${SPARK_TRAINER_ARTIFACTS:-/Volumes/main/spark_trainer/artifacts}
dst=/databricks/spark-trainer
mkdir -p "$dst"
install -m 0755 "$src/gpu-discovery.sh" "$dst/gpu-discovery.sh"
if [ -f "$src/libsparktrainer_jni.so" ]; then
  install -m 0755 "$src/libsparktrainer_jni.so" "$dst/libsparktrainer_jni.so"
else
  echo "install-spark-trainer.sh: $src/libsparktrainer_jni.so not found: GPU fits will fail to load the JNI library" >&2
fi
