/** What users import: the Spark ML {@link dev.sparktrainer.api.SparkTrainer} estimator, the fitted {@link dev.sparktrainer.api.SparkTrainerModel} and its {@link dev.sparktrainer.api.TrainingSummary}. */
package dev.sparktrainer.api;
