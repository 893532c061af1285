#!/usr/bin/env bash
# Runs ClusterBench from a checkout, without a Spark installation (Spark comes from the Maven build's classpath):
# builds spark-trainer and the benchmarks module, then runs the suite. With no arguments it runs the CI-sized
# suite on this machine: local[2], CPU, tiny sizes, mlp and small-cnn at W = 1 and 2, report under
# target/cluster-bench/. Any arguments replace those, e.g.
#   bash benchmarks/cluster/run-local.sh --master 'local-cluster[2,1,2048]' --scale tiny --device cpu --world 1,2
#   bash benchmarks/cluster/run-local.sh --master 'local[*]' --scale small --device cpu --world 1,2,4 --out /tmp/b
# BUILD_DIR (default target) picks Maven's output folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-target}
mvn -q -B -Dbuild.dir="$build" -DskipTests -pl spark-trainer,benchmarks -am install
mvn -q -B -Dbuild.dir="$build" -pl benchmarks dependency:build-classpath -Dmdep.includeScope=runtime \
  -Dmdep.outputFile="$PWD/benchmarks/$build/classpath.txt" >/dev/null
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--master "local[2]" --scale tiny --device cpu --world 1,2 --benches mlp,small-cnn --out target/cluster-bench)
fi
exec java -Xmx6g @conf/jvm.options -Dlog4j2.configurationFile=conf/log4j2.properties \
  -cp "$PWD/benchmarks/$build/classes:$(cat "benchmarks/$build/classpath.txt")" \
  dev.sparktrainer.bench.cluster.ClusterBench "${args[@]}"
