package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.file.Path;
import java.util.Random;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Issue 7's chaos suite on the CPU backend: a rank that fails at a random step makes Spark retry the
 * training stage, which resumes from the newest checkpoint and ends with weights bitwise equal to an
 * uninterrupted run; a rank that stalls makes the job fail within the timeout, naming that rank.
 */
@Timeout(600)
class ReliabilityTest {
  static SparkSession spark;
  static Dataset<Row> data;

  @BeforeAll
  static void start() {
    spark = SparkTestSession.start("ReliabilityTest", 3);
    SparkTrainerTest.spark = spark;
    data = SparkTrainerTest.blobs(160, 4).cache();
    data.count();
  }

  @AfterAll
  static void stop() {
    spark.stop();
  }

  @AfterEach
  void disarm() {
    spark.sparkContext().setLocalProperty(FaultInjection.PROPERTY, null);
  }

  static SparkTrainer trainer(Path checkpoints, int timeoutSeconds) {
    return new SparkTrainer()
        .setModelSpec(ModelSpec.builder().input(4).linear(8).gelu().dropout(0.1f).linear(3).build())
        .setFeatureCols(new String[] {"a", "b", "c", "d"})
        .setOptimizer(OptimizerConfig.adamw(0.01)).setEpochs(2).setBatchSize(8).setNumWorkers(2).setSeed(5)
        .setDevice("cpu").setCheckpointPath(checkpoints.toUri().toString()).setCheckpointInterval(2)
        .setTimeoutSeconds(timeoutSeconds);
  }

  @Test
  void twentySeededFailuresAllResumeToTheUninterruptedWeights(@TempDir Path dir) {
    float[] reference = trainer(dir.resolve("ref"), 30).fit(data).parameters();
    // 160 rows, W*B = 16: 10 steps per epoch, 20 in all.
    Random rnd = new Random(2026);
    for (int run = 0; run < 20; run++) {
      int rank = rnd.nextInt(2);
      int step = 1 + rnd.nextInt(20);
      spark.sparkContext().setLocalProperty(FaultInjection.PROPERTY,
          "rank=" + rank + ",step=" + step + ",attempt=0,action=throw");
      float[] got = trainer(dir.resolve("run" + run), 30).fit(data).parameters();
      assertArrayEquals(reference, got, "run " + run + ": failure of rank " + rank + " at step " + step
          + " did not resume to the same weights");
    }
  }

  @Test
  void withoutCheckpointsARetryStartsOverAndStillMatches(@TempDir Path dir) {
    float[] reference = trainer(dir.resolve("ref"), 30).fit(data).parameters();
    spark.sparkContext().setLocalProperty(FaultInjection.PROPERTY, "rank=1,step=5,attempt=0,action=throw");
    float[] got = trainer(dir.resolve("x"), 30).setCheckpointPath("").fit(data).parameters();
    assertArrayEquals(reference, got);
  }

  @Test
  void aStalledRankIsCutOffWithinTheTimeoutAndTheRetryFinishes(@TempDir Path dir) {
    float[] reference = trainer(dir.resolve("ref"), 3).fit(data).parameters();
    spark.sparkContext().setLocalProperty(FaultInjection.PROPERTY,
        "rank=1,step=3,attempt=0,action=stall,seconds=120");
    long t0 = System.nanoTime();
    float[] got = trainer(dir.resolve("stall"), 3).fit(data).parameters();
    double seconds = (System.nanoTime() - t0) / 1e9;
    assertArrayEquals(reference, got);
    assertTrue(seconds < 3 + 10 + 10, "the stalled attempt was not cut off in time: " + seconds + " s");
  }
}
