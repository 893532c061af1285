package dev.sparktrainer.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.train.EpochStats;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The straggler report on synthetic epoch statistics of synchronous data-parallel ranks. */
class StragglerReportTest {
  static final int BATCH = 100;
  static final int STEPS = 500;

  /**
   * W ranks, E epochs; rank r busy for busyMs[r] per step (data wait waitMs[r] of it); every rank's epoch takes
   * the slowest rank's time, the difference counted as communication, as an all-reduce makes it.
   */
  static List<List<EpochStats>> ranks(double[] busyMs, double[] waitMs, int epochs) {
    double slowest = 0;
    for (double b : busyMs) {
      slowest = Math.max(slowest, b);
    }
    List<List<EpochStats>> out = new ArrayList<>();
    for (int r = 0; r < busyMs.length; r++) {
      List<EpochStats> l = new ArrayList<>();
      for (int e = 0; e < epochs; e++) {
        double wait = waitMs[r] * STEPS / 1e3;
        double compute = (busyMs[r] - waitMs[r]) * STEPS / 1e3;
        double comm = (slowest - busyMs[r] + 2) * STEPS / 1e3;
        l.add(new EpochStats(e, r, (long) STEPS * BATCH, 0.5, 0.8, wait + compute + comm, wait, compute, comm, 0));
      }
      out.add(l);
    }
    return out;
  }

  @Test
  void namesTheRankSlowedByComputeWithItsBreakdown() {
    // rank 2 computes 50% slower than the others (10 ms busy vs 15 ms)
    StragglerReport r = StragglerReport.of(ranks(new double[] {10, 10, 15, 10}, new double[] {1, 1, 1, 1}, 3),
        BATCH, 0.20);
    assertEquals(1, r.stragglers().size());
    StragglerReport.RankTime s = r.stragglers().get(0);
    assertEquals(2, s.rank());
    assertEquals(0.5, s.aboveMedian(), 1e-9);
    assertEquals(0.015, s.busy(), 1e-12);
    assertEquals(0.001, s.dataWait(), 1e-12);
    assertEquals(0.014, s.compute(), 1e-12);
    assertEquals(0.010, r.medianBusySeconds(), 1e-12);
    assertEquals("compute", r.cause(s));
    assertEquals("straggler: rank 2 is 50% slower than the median rank (epochs 1-3): busy 15.0 ms/step (data wait "
        + "1.0 ms/step, compute 14.0 ms/step) vs median 10.0 ms/step; comm 2.0 ms/step; the other ranks waited ~7.5 s "
        + "for it. Cause: compute; "
        + StragglerReport.hint("compute"), r.toString());
  }

  @Test
  void namesADataBoundRank() {
    StragglerReport r = StragglerReport.of(ranks(new double[] {10, 18, 10}, new double[] {1, 9, 1}, 1), BATCH, 0.2);
    assertEquals(List.of(1), r.stragglers().stream().map(StragglerReport.RankTime::rank).toList());
    assertEquals("data loading", r.cause(r.stragglers().get(0)));
    assertTrue(r.toString().startsWith("straggler: rank 1 is 80% slower"), r.toString());
  }

  @Test
  void thresholdIsInclusiveAndBelowItNobodyIsNamed() {
    // median of {10, 10, 12} is 10: rank 2 is exactly 20% above -> named; at 11.9 ms -> not named
    assertEquals(1, StragglerReport.of(ranks(new double[] {10, 10, 12}, new double[] {0, 0, 0}, 1), BATCH, 0.2)
        .stragglers().size());
    StragglerReport none = StragglerReport.of(ranks(new double[] {10, 10, 11.9}, new double[] {0, 0, 0}, 1), BATCH,
        0.2);
    assertFalse(none.hasStragglers());
    assertTrue(none.toString().startsWith("no stragglers (epoch 1, 3 rank(s), none 20% or 0.5 s slower than the "
        + "median busy time 10.0 ms/step)"), none.toString());
  }

  @Test
  void severalStragglersSlowestFirstAndOneRankHasNone() {
    StragglerReport r = StragglerReport.of(ranks(new double[] {10, 13, 10, 10, 20}, new double[] {0, 0, 0, 0, 0},
        2), BATCH, 0.2);
    assertEquals(List.of(4, 1), r.stragglers().stream().map(StragglerReport.RankTime::rank).toList());
    assertFalse(StragglerReport.of(ranks(new double[] {10}, new double[] {0}, 2), BATCH, 0.2).hasStragglers());
  }

  @Test
  void oneEpochReportForTheLiveCheck() {
    List<List<EpochStats>> all = ranks(new double[] {10, 30}, new double[] {0, 0}, 2);
    StragglerReport r = StragglerReport.ofEpoch(List.of(all.get(0).get(1), all.get(1).get(1)), BATCH, 0.2);
    // W = 2: the median is the mean (20 ms); rank 1 is 50% above it
    assertEquals(List.of(1), r.stragglers().stream().map(StragglerReport.RankTime::rank).toList());
    assertTrue(r.toString().contains("(epoch 2)"), r.toString());
  }

  @Test
  void withoutBatchSizeTimesArePerSample() {
    StragglerReport r = StragglerReport.of(ranks(new double[] {10, 10, 15}, new double[] {0, 0, 0}, 1), 0, 0.2);
    assertEquals(List.of(2), r.stragglers().stream().map(StragglerReport.RankTime::rank).toList());
    assertTrue(r.toString().contains("us/sample"), r.toString());
  }

  @Test
  void jitterOfTinyStepsIsNotAStraggler() {
    // 50% slower, but 0.2 ms x 500 steps = 0.1 s over the run: below MIN_EXCESS_SECONDS
    StragglerReport r = StragglerReport.of(ranks(new double[] {0.4, 0.4, 0.6}, new double[] {0, 0, 0}, 1), BATCH,
        0.2);
    assertEquals(0.5, r.ranks().get(2).aboveMedian(), 1e-9);
    assertFalse(r.hasStragglers(), r.toString());
  }

  @Test
  void rejectsABadThreshold() {
    assertThrows(IllegalArgumentException.class, () -> StragglerReport.of(List.of(), BATCH, 0));
  }

  @Test
  void summaryUsesTheReport() {
    TrainingSummary s = new TrainingSummary(ranks(new double[] {10, 10, 15, 10}, new double[] {1, 1, 1, 1}, 2),
        1, 2, "cpu").withBatchSize(BATCH);
    assertEquals(List.of(2), s.stragglers().stragglers().stream().map(StragglerReport.RankTime::rank).toList());
    assertTrue(s.toString().contains("straggler: rank 2 is 50% slower"), s.toString());
  }
}
