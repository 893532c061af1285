package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.TrainingException;
import java.nio.file.Path;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** Invariant 6: a rank that stalls inside training makes the job fail within timeout + 10 s, naming it. */
@Timeout(120)
class StallTest {
  @Test
  void stalledRankFailsTheJobNamingIt(@TempDir Path dir) {
    SparkSession spark = SparkTestSession.start("StallTest", 1);
    try {
      SparkTrainerTest.spark = spark;
      Dataset<Row> data = SparkTrainerTest.blobs(160, 4);
      spark.sparkContext().setLocalProperty(FaultInjection.PROPERTY,
          "rank=1,step=3,attempt=0,action=stall,seconds=120");
      long t0 = System.nanoTime();
      TrainingException e = assertThrows(TrainingException.class,
          () -> ReliabilityTest.trainer(dir, 3).fit(data));
      double seconds = (System.nanoTime() - t0) / 1e9;
      assertTrue(seconds < 3 + 10, "took " + seconds + " s");
      assertTrue(e.getMessage().startsWith("training failed on 2 worker(s): "), e.getMessage());
      assertTrue(e.getMessage().contains("peer rank 1"), e.getMessage());
      // the failing rank's log tail travels with the error
      assertTrue(e.getMessage().contains("\n-- last log lines of rank 0 --\n"), e.getMessage());
      assertTrue(e.getMessage().contains("step 2 done"), e.getMessage());
      assertTrue(e.getMessage().contains("communicator RingCommunicator up"), e.getMessage());
    } finally {
      spark.sparkContext().setLocalProperty(FaultInjection.PROPERTY, null);
      spark.stop();
    }
  }
}
