package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.api.SummaryFiles;
import dev.sparktrainer.api.TrainingSummary;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** A real fit (W = 2, local mode): progress reaches the driver, and the summary is saved with the model. */
@Timeout(180)
class ProgressSparkTest {
  static SparkSession spark;

  @BeforeAll
  static void start() {
    spark = SparkTestSession.start("ProgressSparkTest");
    SparkTrainerTest.spark = spark;
  }

  @AfterAll
  static void stop() {
    ProgressServer.testListener = null;
    spark.stop();
  }

  @Test
  void progressArrivesAndTheSummaryIsSavedWithTheModel(@TempDir Path dir) throws Exception {
    List<ProgressEvent> events = new ArrayList<>();
    ProgressServer.testListener = events::add; // the server calls it one event at a time
    spark.sparkContext().setLocalProperty(ProgressPrinter.CONF, "log");
    SparkTrainerModel model;
    try {
      model = SparkTrainerTest.trainer(2).setEpochs(3).setBatchSize(25).fit(SparkTrainerTest.blobs(300, 5));
    } finally {
      ProgressServer.testListener = null;
      spark.sparkContext().setLocalProperty(ProgressPrinter.CONF, null);
    }
    // 300 rows, W = 2, B = 25: 6 steps per epoch, 18 in all
    for (int rank = 0; rank < 2; rank++) {
      List<Long> steps = new ArrayList<>();
      List<Integer> epochEnds = new ArrayList<>();
      int done = 0;
      for (ProgressEvent e : events) {
        if (e.rank() != rank) {
          continue;
        }
        assertEquals(0, done, "an event after Done: " + e);
        if (e instanceof ProgressEvent.Step s) {
          assertEquals(18, s.totalSteps());
          assertEquals(3, s.epochs());
          assertEquals((s.step() - 1) * 25, s.samples()); // the clock starts after step 1
          steps.add(s.step());
        } else if (e instanceof ProgressEvent.Epoch ep) {
          assertTrue(Double.isFinite(ep.stats().loss()), "live epoch loss: " + ep);
          epochEnds.add(ep.stats().epoch());
        } else if (e instanceof ProgressEvent.Done d) {
          assertEquals(-1, d.peakDeviceMemoryBytes());
          assertEquals("cpu", d.device());
          done++;
        }
      }
      assertEquals(1, done, "rank " + rank + " Done events: " + events);
      assertEquals(List.of(0, 1, 2), epochEnds, "rank " + rank + " reports each epoch's figures live, in order");
      for (int i = 1; i < steps.size(); i++) {
        assertTrue(steps.get(i) > steps.get(i - 1), "rank " + rank + " steps out of order: " + steps);
      }
      assertTrue(steps.containsAll(List.of(6L, 12L, 18L)), "every epoch's last step is reported: " + steps);
    }

    TrainingSummary s = model.summary();
    assertEquals(25, s.batchSize());
    assertEquals(2, s.worldSize());
    model.write().overwrite().save(dir.resolve("model").toString());
    Path summaryDir = dir.resolve("model").resolve(SparkTrainerModel.SUMMARY_DIR);
    for (String f : List.of(SummaryFiles.JSON, SummaryFiles.EPOCHS_CSV, SummaryFiles.RANKS_CSV, SummaryFiles.CHART)) {
      assertTrue(Files.size(summaryDir.resolve(f)) > 0, f);
    }
    TrainingSummary back = TrainingSummary.load(summaryDir.toString());
    assertEquals(s.epochs(), back.epochs());
    assertEquals(s.perRank(), back.perRank());
    assertEquals(4, Files.readAllLines(summaryDir.resolve(SummaryFiles.EPOCHS_CSV)).size());
    SparkTrainerModel loaded = SparkTrainerModel.load(dir.resolve("model").toString());
    assertEquals(model.parameters().length, loaded.parameters().length); // the extra folder does not disturb load
  }
}
