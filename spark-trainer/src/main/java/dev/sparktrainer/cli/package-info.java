/** Command-line entry points: the spark-submit application ({@link dev.sparktrainer.cli.SparkTrainApp}) and a local, Spark-free trainer. */
package dev.sparktrainer.cli;
