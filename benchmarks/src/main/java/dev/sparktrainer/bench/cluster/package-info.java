/**
 * The benchmark suite for clusters ({@link dev.sparktrainer.bench.cluster.ClusterBench}): trains synthetic
 * workloads through the public Spark estimator against any master (local, local-cluster, standalone, YARN,
 * Kubernetes, Databricks) and writes the JSON / Markdown / PNG report of benchmarks/README.md. Job definitions
 * for Databricks-style clusters are in benchmarks/cluster/; docs/cluster-benchmarks.md tells how to run it.
 */
package dev.sparktrainer.bench.cluster;
