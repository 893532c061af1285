package dev.sparktrainer.spark;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;

/** Starts local-cluster sessions (standalone workers, executors in their own JVMs) from a Maven test. */
final class LocalClusterSupport {
  private LocalClusterSupport() {}

  /** The settings every local-cluster test needs (SPARK-NOTES: executors take the test classpath). */
  static SparkConf conf(String master, String appName) {
    String cp = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
    return new SparkConf(false)
        .setMaster(master)
        .setAppName(appName)
        .set("spark.ui.enabled", "false")
        .set("spark.driver.host", "127.0.0.1")
        .set("spark.driver.bindAddress", "127.0.0.1")
        .set("spark.executorEnv.SPARK_SCALA_VERSION", "2.13")
        .set("spark.executorEnv.SPARK_SQL_TESTING", "1")
        .set("spark.executor.extraClassPath", cp)
        .set("spark.executor.memory", "768m")
        .set("spark.scheduler.minRegisteredResourcesRatio", "1.0")
        .set("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
        .set("spark.kryo.registrator", "dev.sparktrainer.spark.TrainerKryoRegistrator");
  }

  /**
   * Starts the cluster. Note [local-cluster work folders]: standalone workers write executor folders under
   * SPARK_HOME/work (or ./work, i.e. into the checkout); under spark.testing they use temp folders instead,
   * and SPARK_HOME is spark.test.home (under {@code dir}), so no real SPARK_HOME leaks in. The properties are
   * set only while the cluster starts: the SparkConf does not read system properties, so the session itself
   * does not run in Spark's test mode.
   */
  static SparkContext start(SparkConf conf, Path dir) throws IOException {
    System.setProperty("spark.testing", "true");
    System.setProperty("spark.test.home", Files.createDirectories(dir.resolve("spark-home")).toString());
    try {
      return new SparkContext(conf);
    } finally {
      System.clearProperty("spark.testing");
      System.clearProperty("spark.test.home");
    }
  }
}
