package dev.sparktrainer.api;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.train.EpochStats;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import javax.imageio.ImageIO;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The summary's JSON, CSV and PNG files: written, and parsed back to the same figures. */
class SummaryFilesTest {

  static TrainingSummary summary(boolean classifier) {
    List<List<EpochStats>> perRank = List.of(
        List.of(new EpochStats(0, 0, 1000, 0.9, classifier ? 0.6 : Double.NaN, 2.0, 0.1, 1.5, 0.4, 0),
            new EpochStats(1, 0, 1000, 0.5, classifier ? 0.8 : Double.NaN, 1.8, 0.1, 1.4, 0.3, 1)),
        List.of(new EpochStats(0, 1, 1000, 1.1, classifier ? 0.5 : Double.NaN, 2.5, 0.2, 1.6, 0.7, 0),
            new EpochStats(1, 1, 1000, 0.7, classifier ? 0.7 : Double.NaN, 2.0, 0.2, 1.5, 0.3, 1)));
    return new TrainingSummary(perRank, 3.25, 9.5, "cpu").withBatchSize(50)
        .withPeakDeviceMemory(new long[] {123456789L, -1})
        .withValidation(List.of(new TrainingSummary.Validation(0, 200, 0.95, classifier ? 0.55 : Double.NaN),
            new TrainingSummary.Validation(1, 200, 0.6, classifier ? 0.75 : Double.NaN)));
  }

  @Test
  void epochFiguresAreSampleWeightedAndIncludeValidation() {
    TrainingSummary s = summary(true);
    TrainingSummary.Epoch e0 = s.epochs().get(0);
    assertEquals(1.0, e0.loss(), 1e-12);
    assertEquals(0.55, e0.accuracy(), 1e-12);
    assertEquals(2000 / 2.5, e0.samplesPerSecond(), 1e-9);
    assertEquals(0.95, e0.validationLoss(), 0);
    assertEquals(0.75, s.epochs().get(1).validationAccuracy(), 0);
    assertTrue(s.toString().contains("epoch 1: loss 1.0000, accuracy 0.5500, validation loss 0.9500, accuracy "
        + "0.5500, 800 samples/s"), s.toString());
    assertTrue(s.toString().contains("peak device memory 117.7 MiB"), s.toString());
  }

  @Test
  void jsonRoundTrip() {
    for (boolean classifier : new boolean[] {true, false}) {
      TrainingSummary s = summary(classifier);
      TrainingSummary back = TrainingSummary.fromJson(s.toJson());
      assertEquals(s.epochs(), back.epochs());
      assertEquals(s.perRank(), back.perRank());
      assertEquals(s.validation(), back.validation());
      assertArrayEquals(s.peakDeviceMemoryBytes(), back.peakDeviceMemoryBytes());
      assertEquals(s.batchSize(), back.batchSize());
      assertEquals(s.device(), back.device());
      assertEquals(s.fitToFirstStepSeconds(), back.fitToFirstStepSeconds());
      assertEquals(s.totalSeconds(), back.totalSeconds());
      assertEquals(s.toJson(), back.toJson());
    }
  }

  @Test
  void badJsonSaysWhatIsWrong() {
    assertEquals("training summary: format version 99 is not supported (this build reads version 1)",
        assertThrows(IllegalArgumentException.class, () -> TrainingSummary.fromJson("{\"version\": 99}"))
            .getMessage());
    assertTrue(assertThrows(IllegalArgumentException.class, () -> TrainingSummary.fromJson("{not json"))
        .getMessage().startsWith("training summary: not valid JSON"));
  }

  @Test
  void filesAreWrittenAndParseBack(@TempDir Path dir) throws Exception {
    TrainingSummary s = summary(true);
    List<String> written = SummaryFiles.write(s, dir.toString(), new Configuration());
    assertEquals(List.of("summary.json", "epochs.csv", "ranks.csv", "curves.png"), written);

    TrainingSummary back = SummaryFiles.read(dir.toString(), new Configuration());
    assertEquals(s.epochs(), back.epochs());

    List<String> epochs = Files.readAllLines(dir.resolve("epochs.csv"));
    assertEquals("epoch,loss,accuracy,validation_loss,validation_accuracy,samples_per_second,seconds",
        epochs.get(0));
    assertEquals(3, epochs.size());
    String[] row = epochs.get(1).split(",", -1);
    assertEquals("1", row[0]);
    assertEquals(1.0, Double.parseDouble(row[1]), 1e-9);
    assertEquals(0.55, Double.parseDouble(row[2]), 1e-9);
    assertEquals(0.95, Double.parseDouble(row[3]), 1e-9);

    List<String> ranks = Files.readAllLines(dir.resolve("ranks.csv"));
    assertEquals(5, ranks.size()); // header + 2 ranks x 2 epochs
    String[] r1 = ranks.get(3).split(",", -1);
    assertEquals("1", r1[0]);
    assertEquals(0.7, Double.parseDouble(r1[8]), 1e-9); // comm seconds of rank 1, epoch 1
    assertEquals("", r1[11]); // rank 1 reported no device memory
    assertEquals("123456789", ranks.get(1).split(",", -1)[11]);

    BufferedImage png = ImageIO.read(new ByteArrayInputStream(Files.readAllBytes(dir.resolve("curves.png"))));
    assertNotNull(png, "curves.png is not a PNG ImageIO can read");
    assertEquals(2 * SummaryChart.WIDTH, png.getWidth()); // loss and accuracy panels
    assertEquals(SummaryChart.HEIGHT, png.getHeight());
    assertTrue(distinctColours(png) > 4, "the chart looks blank");
  }

  @Test
  void regressionChartHasOnlyTheLossPanelAndNaNsBecomeEmptyCells(@TempDir Path dir) throws Exception {
    TrainingSummary s = summary(false);
    s.save(dir.toString());
    BufferedImage png = ImageIO.read(dir.resolve("curves.png").toFile());
    assertEquals(SummaryChart.WIDTH, png.getWidth());
    assertEquals("", Files.readAllLines(dir.resolve("epochs.csv")).get(1).split(",", -1)[2]);
    assertTrue(Double.isNaN(TrainingSummary.load(dir.toString()).epochs().get(0).accuracy()));
  }

  @Test
  void missingSummaryIsAClearError(@TempDir Path dir) {
    assertTrue(assertThrows(IllegalArgumentException.class, () -> TrainingSummary.load(dir.toString()))
        .getMessage().startsWith("no training summary at "));
  }

  static int distinctColours(BufferedImage img) {
    java.util.Set<Integer> c = new java.util.HashSet<>();
    for (int y = 0; y < img.getHeight(); y += 3) {
      for (int x = 0; x < img.getWidth(); x += 3) {
        c.add(img.getRGB(x, y));
      }
    }
    return c.size();
  }
}
