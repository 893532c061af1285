#!/usr/bin/env bash
# Trains the Fashion-MNIST MLP and prints "test accuracy: 0.xxxx" last.
# Installs the dataset (Debian package dataset-fashion-mnist) when missing, builds with Maven, then runs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "installing dataset-fashion-mnist (needs root and apt)" >&2
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
mvn -q -B -DskipTests install
mvn -q -B -pl spark-trainer dependency:build-classpath -Dmdep.includeScope=test -Dmdep.outputFile=target/classpath.txt >/dev/null
exec java -cp "spark-trainer/target/classes:$(cat spark-trainer/target/classpath.txt)" dev.sparktrainer.cli.LocalTrain "$@"
