package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainer;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Issue 7's chaos case with a real process death: on a local-cluster (2 workers, executors in their own
 * JVMs), the executor running one rank is killed mid-training; Spark relaunches it, retries the training
 * stage, which resumes from the newest checkpoint and ends with weights bitwise equal to an uninterrupted run.
 */
@Timeout(240)
class LocalClusterExecutorKillTest {
  @Test
  void killedExecutorRecoversToTheSameWeights(@TempDir Path dir) throws Exception {
    SparkConf conf = LocalClusterSupport.conf("local-cluster[2,1,1024]", "LocalClusterExecutorKillTest")
        .set("spark.cores.max", "2")
        .set("spark.sql.shuffle.partitions", "2")
        .set("spark.default.parallelism", "2")
        .set("spark.stage.maxConsecutiveAttempts", "4");
    SparkContext sc = LocalClusterSupport.start(conf, dir);
    SparkSession spark = SparkSession.builder().getOrCreate();
    java.util.concurrent.atomic.AtomicInteger removed = new java.util.concurrent.atomic.AtomicInteger();
    java.util.concurrent.atomic.AtomicInteger retried = new java.util.concurrent.atomic.AtomicInteger();
    sc.addSparkListener(new org.apache.spark.scheduler.SparkListener() {
      @Override
      public void onExecutorRemoved(org.apache.spark.scheduler.SparkListenerExecutorRemoved e) {
        removed.incrementAndGet();
      }

      @Override
      public void onStageSubmitted(org.apache.spark.scheduler.SparkListenerStageSubmitted e) {
        if (e.stageInfo().attemptNumber() > 0 && e.stageInfo().rddInfos().exists(r -> r.isBarrier())) {
          retried.incrementAndGet();
        }
      }
    });
    try {
      SparkTrainerTest.spark = spark;
      Dataset<Row> data = SparkTrainerTest.blobs(160, 4).cache();
      data.count();
      float[] reference = ReliabilityTest.trainer(dir.resolve("ref"), 30).fit(data).parameters();
      sc.setLocalProperty(FaultInjection.PROPERTY, "rank=1,step=7,attempt=0,action=halt");
      long t0 = System.nanoTime();
      SparkTrainer t = ReliabilityTest.trainer(dir.resolve("killed"), 30);
      float[] got = t.fit(data).parameters();
      double seconds = (System.nanoTime() - t0) / 1e9;
      assertArrayEquals(reference, got, "the run whose executor was killed must resume to the same weights");
      sc.listenerBus().waitUntilEmpty();
      assertTrue(removed.get() >= 1, "no executor was lost: the kill did not happen");
      assertTrue(retried.get() >= 1, "the training stage was not retried");
      assertTrue(Files.list(dir.resolve("killed")).findAny().isPresent(), "checkpoints were written");
      System.out.println("LocalClusterExecutorKillTest: recovered in " + seconds + " s");
    } finally {
      sc.setLocalProperty(FaultInjection.PROPERTY, null);
      spark.stop();
    }
  }
}
