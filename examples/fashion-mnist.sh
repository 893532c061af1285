#!/usr/bin/env bash
# The main job: trains the Fashion-MNIST MLP (784-256-128-10, AdamW, 3 epochs) through Spark, local[2] with
# W = 2 barrier tasks (on GPUs when the tasks get them, else CPU), and prints "test accuracy: 0.xxxx" last.
# Installs the dataset (Debian package dataset-fashion-mnist) when missing and builds with Maven.
# Extra arguments go to the app, e.g. --config conf/my-job.json --master local[4].
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "installing dataset-fashion-mnist (needs root and apt)" >&2
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
mvn -q -B -DskipTests install
# Spark is a provided dependency: take it (and the rest) from the Maven build's test classpath.
mvn -q -B -pl spark-trainer dependency:build-classpath -Dmdep.includeScope=test \
  -Dmdep.outputFile=target/classpath.txt >/dev/null
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--config conf/fashion-mnist.json --master "local[2]")
fi
exec java -Xmx6g @conf/jvm.options -Dlog4j2.configurationFile=conf/log4j2.properties \
  -cp "spark-trainer/target/classes:$(cat spark-trainer/target/classpath.txt)" \
  dev.sparktrainer.cli.SparkTrainApp "${args[@]}"
