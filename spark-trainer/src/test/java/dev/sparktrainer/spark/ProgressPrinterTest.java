package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.train.EpochStats;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The driver's progress display, fed synthetic events with a fake clock. */
class ProgressPrinterTest {
  long now;

  ProgressEvent.Step step(int rank, long step, double seconds) {
    return new ProgressEvent.Step(rank, (int) ((step - 1) / 10), 2, step, 20, step * 64, seconds,
        (20 - step) * seconds / step, Double.NaN);
  }

  @Test
  void barRedrawsInPlaceAtMostEvery100msAndEndsWithANewline() {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    List<String> log = new ArrayList<>();
    ProgressPrinter p = new ProgressPrinter(ProgressPrinter.Mode.BAR, 2, 64, new PrintStream(bytes, true,
        StandardCharsets.UTF_8), log::add, () -> now);
    for (long s = 1; s <= 20; s++) {
      now += 30_000_000L; // 30 ms per step
      p.accept(step(0, s, s * 0.03));
      p.accept(step(1, s, s * 0.03));
    }
    String out = bytes.toString(StandardCharsets.UTF_8);
    String[] draws = out.split("\r", -1);
    // first draw, the epoch change at step 11, every >= 100 ms (4 steps) and the last one
    assertTrue(draws.length > 4 && draws.length < 15, draws.length + " draws: " + out);
    assertTrue(out.contains("\repoch 1/2 [######------------------------]  20% step 4/20, 4,267 samples/s, ETA 0:00"), out);
    assertTrue(out.endsWith("\n"), "the finished bar must end its line");
    assertTrue(draws[draws.length - 1].stripTrailing().equals(
        "epoch 2/2 [##############################] 100% step 20/20, 4,267 samples/s, done"), out);
    // a shorter line overwrites the longer one before it completely
    assertEquals(draws[draws.length - 2].length(), draws[draws.length - 1].length() - 1, out);
    assertTrue(log.isEmpty());
  }

  @Test
  void logModeWritesALineEveryTenPercentAndEpochSummaries() {
    List<String> log = new ArrayList<>();
    ProgressPrinter p = new ProgressPrinter(ProgressPrinter.Mode.LOG, 1, 64, null, log::add, () -> now);
    for (long s = 1; s <= 20; s++) {
      p.accept(step(0, s, s * 0.5));
      if (s % 10 == 0) {
        p.accept(new ProgressEvent.Epoch(0, new EpochStats((int) (s / 10) - 1, 0, 640, 0.25, 0.5, 5, 0, 5, 0, 0)));
      }
    }
    p.accept(new ProgressEvent.Done(0, -1, "cpu"));
    // steps 1 (5%), 2, 4, .., 20 (each 10%), 11 (new epoch), and two epoch summaries
    assertEquals(12 + 2, log.size(), String.join("\n", log));
    assertEquals("training: epoch 1/2 [##----------------------------]   5% step 1/20, 128 samples/s, ETA 0:10",
        log.get(0));
    assertTrue(log.contains("training: epoch 1 finished: loss 0.2500, accuracy 0.5000"), String.join("\n", log));
    assertEquals("training: epoch 2/2 [##############################] 100% step 20/20, 128 samples/s, done",
        log.get(log.size() - 2));
  }

  @Test
  void namesAStragglerAsSoonAsAnEpochIsComplete() {
    List<String> log = new ArrayList<>();
    ProgressPrinter p = new ProgressPrinter(ProgressPrinter.Mode.OFF, 3, 64, null, log::add, () -> now);
    p.accept(new ProgressEvent.Epoch(0, new EpochStats(0, 0, 640, 1, 0.5, 3, 0.1, 0.9, 2.0, 0)));
    p.accept(new ProgressEvent.Epoch(2, new EpochStats(0, 2, 640, 1, 0.5, 3, 0.1, 2.9, 0.0, 0)));
    assertTrue(log.isEmpty(), "no report before every rank finished the epoch");
    p.accept(new ProgressEvent.Epoch(1, new EpochStats(0, 1, 640, 1, 0.5, 3, 0.1, 0.9, 2.0, 0)));
    assertEquals(1, p.stragglerLines().size());
    assertTrue(log.get(0).startsWith("straggler: rank 2 is 200% slower than the median rank (epoch 1): busy "
        + "300.0 ms/step"), log.get(0));
  }

  @Test
  void validationFiguresAreLoggedAsTheyArriveAndTravelOverTheWire() throws Exception {
    List<String> log = new ArrayList<>();
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    ProgressPrinter bar = new ProgressPrinter(ProgressPrinter.Mode.BAR, 1, 64, new PrintStream(bytes, true,
        StandardCharsets.UTF_8), log::add, () -> now);
    bar.accept(step(0, 1, 0.5));
    ProgressEvent.Validation v = new ProgressEvent.Validation(0, 1, 10_000, 0.31234, 0.8875);
    bar.accept(v);
    assertEquals(List.of("validation: epoch 2: loss 0.3123, accuracy 0.8875 (10,000 rows)"), log);
    assertTrue(bytes.toString(StandardCharsets.UTF_8).endsWith("\r"), "the bar is cleared before the line");
    new ProgressPrinter(ProgressPrinter.Mode.LOG, 1, 64, null, log::add, () -> now)
        .accept(new ProgressEvent.Validation(0, 0, 50, 2.5, Double.NaN));
    assertEquals("validation: epoch 1: loss 2.5000 (50 rows)", log.get(1)); // mse: no accuracy
    new ProgressPrinter(ProgressPrinter.Mode.OFF, 1, 64, null, log::add, () -> now).accept(v);
    assertEquals(2, log.size(), "mode off prints nothing");
    // The frame carries every field; the server sets the rank from the connection.
    byte[] frame = ProgressWire.encode(v);
    ProgressEvent back = ProgressWire.read(new java.io.DataInputStream(new java.io.ByteArrayInputStream(frame)), 0);
    assertEquals(v, back);
  }

  @Test
  void modeFromConf() {
    assertEquals(ProgressPrinter.Mode.BAR, ProgressPrinter.Mode.parse("auto", true));
    assertEquals(ProgressPrinter.Mode.LOG, ProgressPrinter.Mode.parse(null, false));
    assertEquals(ProgressPrinter.Mode.OFF, ProgressPrinter.Mode.parse("off", true));
    assertEquals("spark.sparktrainer.progress must be auto, bar, log or off, got 'loud'",
        assertThrows(IllegalArgumentException.class, () -> ProgressPrinter.Mode.parse("loud", true)).getMessage());
    assertEquals("1:01:05", ProgressPrinter.duration(3665));
    assertEquals("?", ProgressPrinter.duration(Double.NaN));
  }
}
