package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageCompleted;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The README's fit() -> first step figure: W = 2, local[2], the cached 60,000 x 784 Fashion-MNIST training
 * set, the MLP 784-256-128-10, Spark's default serializer (as the example app). Prints where the time went
 * (validation, rows to ranks, data loading, communicator, model) for the first fit of a fresh JVM and for a
 * second fit in the same session; asserts only that the phases are recorded in order, never their duration.
 */
@Timeout(300)
class FitStartupTest {
  @Test
  void printsTheStartupBreakdown() throws Exception {
    assumeTrue(Files.isDirectory(FashionMnist.DEFAULT_DIR),
        "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); .ci/run installs it");
    SparkSession spark = SparkSession.builder().master("local[2]").appName("FitStartupTest")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.stage.maxConsecutiveAttempts", "1")
        .getOrCreate();
    try {
      Dataset<Row> train = FashionMnistSource.load(spark, FashionMnist.DEFAULT_DIR, "train", 2);
      long t0 = System.nanoTime();
      assertEquals(60_000, train.cache().count());
      System.out.printf(Locale.ROOT, "FitStartupTest: cached 60,000 rows in %.2f s%n", (System.nanoTime() - t0) / 1e9);
      SparkTrainer trainer = new SparkTrainer()
          .setModelSpec(ModelSpec.mlp(784, new int[] {256, 128}, 10, "relu", 0f))
          .setOptimizer(OptimizerConfig.adamw(1e-3))
          .setNumWorkers(2).setBatchSize(128).setEpochs(1).setSeed(42).setDevice("cpu");
      StageTimes stages = new StageTimes();
      spark.sparkContext().addSparkListener(stages);
      for (String run : new String[] {"first fit", "second fit"}) {
        stages.clear();
        TrainingJob.Result r = TrainingJob.run(train, trainer);
        TrainingJob.Startup s = r.startup();
        spark.sparkContext().listenerBus().waitUntilEmpty();
        System.out.println("FitStartupTest, " + run + ": " + s + "\n  stages (ms after fit()): "
            + stages.since(s.fitStart()));
        assertTrue(s.fitStart() <= s.validated() && s.validated() <= s.tasksStarted()
            && s.tasksStarted() <= s.dataReady() && s.dataReady() <= s.commReady() && s.commReady() <= s.firstStep(),
            "phases out of order: " + s);
        assertEquals(s.toFirstStepSeconds(), r.summary().fitToFirstStepSeconds(), 1e-9);
      }
    } finally {
      spark.stop();
    }
  }

  /** Submission and completion times of the stages, for the printed breakdown. */
  static final class StageTimes extends SparkListener {
    private final List<String> events = Collections.synchronizedList(new ArrayList<>());

    void clear() {
      events.clear();
    }

    @Override
    public void onStageSubmitted(SparkListenerStageSubmitted e) {
      events.add(System.currentTimeMillis() + " submit " + e.stageInfo().name());
    }

    @Override
    public void onStageCompleted(SparkListenerStageCompleted e) {
      events.add(System.currentTimeMillis() + " done " + e.stageInfo().name());
    }

    /** "ms after fitStart: event; ..." */
    String since(long fitStart) {
      StringBuilder b = new StringBuilder();
      synchronized (events) {
        for (String e : events) {
          int sp = e.indexOf(' ');
          b.append(Long.parseLong(e.substring(0, sp)) - fitStart).append(e.substring(sp)).append("; ");
        }
      }
      return b.toString();
    }
  }
}
