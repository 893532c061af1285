package dev.sparktrainer.spark;

import org.apache.spark.sql.SparkSession;

/** A small local Spark session for tests: local[4], no UI, few shuffle partitions, no stage retries. */
public final class SparkTestSession {
  private SparkTestSession() {}

  public static SparkSession start(String name) {
    return start(name, 1);
  }

  /** A session whose training stage may run {@code stageAttempts} times (Spark's default is 4). */
  public static SparkSession start(String name, int stageAttempts) {
    return SparkSession.builder()
        .master("local[4]")
        .appName(name)
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.stage.maxConsecutiveAttempts", String.valueOf(stageAttempts))
        .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
        .config("spark.kryo.registrator", "dev.sparktrainer.spark.TrainerKryoRegistrator")
        .config("spark.kryo.registrationRequired", "true")
        .getOrCreate();
  }
}
