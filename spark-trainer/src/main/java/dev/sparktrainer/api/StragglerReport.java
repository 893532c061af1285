package dev.sparktrainer.api;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.train.EpochStats;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;

/**
 * Names the ranks whose step time is at least {@code threshold} (default 20%) above the median rank's, with
 * each one's breakdown: the "one GPU at 30% while the others are at 95%" case.
 *
 * <p>Note [straggler metric]: in synchronous data-parallel training every rank's epoch takes the same wall
 * time, because every all-reduce waits for the slowest rank. What differs is where the time goes: the slow
 * rank spends it loading data or computing, the others spend it waiting inside the all-reduce (counted as
 * communication). So a rank's step time here is its <em>busy</em> time per step, data wait + compute,
 * excluding communication; the fast ranks' extra communication time is the straggler's cost to the job.
 * A straggler must also cost the job at least {@value #MIN_EXCESS_SECONDS} s over the epochs considered, so
 * that the jitter of sub-millisecond steps is not reported.
 */
public final class StragglerReport implements Serializable {
  private static final long serialVersionUID = 1L;
  /** A rank is a straggler when its busy time per step is >= 1.2 x the median. */
  public static final double DEFAULT_THRESHOLD = 0.20;
  /**
   * ... and when its extra busy time over the epochs considered adds up to at least this many seconds, so
   * that jitter of sub-millisecond steps is not reported.
   */
  public static final double MIN_EXCESS_SECONDS = 0.5;

  /**
   * One rank's time per step (seconds) over the epochs considered: busy = data wait + compute; comm includes
   * waiting for slower ranks; {@code aboveMedian} is busy / median - 1 (0.35 = 35% slower than the median).
   */
  public record RankTime(int rank, long steps, double busy, double dataWait, double compute, double comm,
      double aboveMedian) implements Serializable {}

  private final List<RankTime> ranks;
  private final List<RankTime> stragglers;
  private final double medianBusy;
  private final double threshold;
  private final boolean perStep;
  private final String epochs;

  private StragglerReport(List<RankTime> ranks, double medianBusy, double threshold, boolean perStep,
      String epochs) {
    this.ranks = List.copyOf(ranks);
    this.medianBusy = medianBusy;
    this.threshold = threshold;
    this.perStep = perStep;
    this.epochs = epochs;
    List<RankTime> s = new ArrayList<>();
    for (RankTime r : ranks) {
      if (medianBusy > 0 && r.aboveMedian() >= threshold - 1e-12 && excessSeconds(r) >= MIN_EXCESS_SECONDS) {
        s.add(r);
      }
    }
    s.sort((a, b) -> Double.compare(b.aboveMedian(), a.aboveMedian()));
    this.stragglers = List.copyOf(s);
  }

  /**
   * The report over all epochs of every rank.
   *
   * @param perRank each rank's epoch statistics, indexed by rank
   * @param batchSize per-worker batch size (steps = samples / batch); 0 when unknown, then times are per sample
   * @param threshold e.g. 0.20 for "20% above the median"
   */
  public static StragglerReport of(List<List<EpochStats>> perRank, int batchSize, double threshold) {
    List<EpochStats> totals = new ArrayList<>();
    int first = Integer.MAX_VALUE;
    int last = Integer.MIN_VALUE;
    for (int r = 0; r < perRank.size(); r++) {
      long samples = 0;
      double wait = 0;
      double compute = 0;
      double comm = 0;
      for (EpochStats s : perRank.get(r)) {
        samples += s.samples();
        wait += s.dataWaitSeconds();
        compute += s.computeSeconds();
        comm += s.commSeconds();
        first = Math.min(first, s.epoch());
        last = Math.max(last, s.epoch());
      }
      totals.add(new EpochStats(-1, r, samples, 0, 0, wait + compute + comm, wait, compute, comm, 0));
    }
    String epochs = first > last ? "no epochs" : first == last ? "epoch " + (first + 1)
        : "epochs " + (first + 1) + "-" + (last + 1);
    return ofTotals(totals, batchSize, threshold, epochs);
  }

  /** The report for one epoch: one EpochStats per rank (the live check while training runs). */
  public static StragglerReport ofEpoch(List<EpochStats> oneEpochByRank, int batchSize, double threshold) {
    String epochs = oneEpochByRank.isEmpty() ? "no epochs" : "epoch " + (oneEpochByRank.get(0).epoch() + 1);
    return ofTotals(oneEpochByRank, batchSize, threshold, epochs);
  }

  private static StragglerReport ofTotals(List<EpochStats> totals, int batchSize, double threshold,
      String epochs) {
    if (!(threshold > 0)) {
      throw new IllegalArgumentException("straggler threshold must be > 0 (0.2 = 20% above the median), got "
          + threshold);
    }
    boolean perStep = batchSize > 0;
    double[] busy = new double[totals.size()];
    List<RankTime> out = new ArrayList<>();
    for (int i = 0; i < totals.size(); i++) {
      EpochStats s = totals.get(i);
      long steps = perStep ? Math.max(1, s.samples() / batchSize) : Math.max(1, s.samples());
      busy[i] = (s.dataWaitSeconds() + s.computeSeconds()) / steps;
    }
    double median = median(busy);
    for (int i = 0; i < totals.size(); i++) {
      EpochStats s = totals.get(i);
      long steps = perStep ? Math.max(1, s.samples() / batchSize) : Math.max(1, s.samples());
      out.add(new RankTime(s.rank(), steps, busy[i], s.dataWaitSeconds() / steps, s.computeSeconds() / steps,
          s.commSeconds() / steps, median > 0 ? busy[i] / median - 1 : 0));
    }
    return new StragglerReport(out, median, threshold, perStep, epochs);
  }

  /** The job time a rank's extra busy time costs over the epochs considered (the others wait that long). */
  public double excessSeconds(RankTime r) {
    return Math.max(0, (r.busy() - medianBusy) * r.steps());
  }

  static double median(double[] v) {
    if (v.length == 0) {
      return 0;
    }
    double[] s = v.clone();
    Arrays.sort(s);
    int n = s.length;
    return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }

  /** Every rank's times, by rank. */
  public List<RankTime> ranks() {
    return ranks;
  }

  /** The stragglers, slowest first; empty when every rank is within the threshold. */
  public List<RankTime> stragglers() {
    return stragglers;
  }

  public boolean hasStragglers() {
    return !stragglers.isEmpty();
  }

  /** The median rank's busy time per step (per sample when the batch size is unknown), seconds. */
  public double medianBusySeconds() {
    return medianBusy;
  }

  public double threshold() {
    return threshold;
  }

  /** What a straggler's extra time is mostly made of: "data loading" or "compute". */
  public String cause(RankTime r) {
    double medianWait = median(ranks.stream().mapToDouble(RankTime::dataWait).toArray());
    double medianCompute = median(ranks.stream().mapToDouble(RankTime::compute).toArray());
    return r.dataWait() - medianWait > r.compute() - medianCompute ? "data loading" : "compute";
  }

  /** What to look at for a straggler of this cause. */
  static String hint(String cause) {
    return cause.equals("data loading")
        ? "its input is slower to read (a skewed or remote partition, a busy host, a slow disk): check the host's "
            + "load and the input's locality, or cache the DataFrame before fit"
        : "its device is slower (another process on the GPU, thermal or power throttling, a different GPU model, "
            + "a shared CPU host): check nvidia-smi / top on its host";
  }

  ObjectNode toJsonNode() {
    ObjectNode o = JsonNodeFactory.instance.objectNode();
    o.put("thresholdPercent", threshold * 100);
    o.put("unit", perStep ? "seconds per step" : "seconds per sample");
    o.put("medianBusy", medianBusy);
    ArrayNode a = o.putArray("stragglers");
    for (RankTime r : stragglers) {
      ObjectNode x = a.addObject();
      x.put("rank", r.rank());
      x.put("busy", r.busy());
      x.put("dataWait", r.dataWait());
      x.put("compute", r.compute());
      x.put("comm", r.comm());
      x.put("percentAboveMedian", r.aboveMedian() * 100);
      x.put("excessSeconds", excessSeconds(r));
      x.put("cause", cause(r));
    }
    return o;
  }

  private String ms(double seconds) {
    return perStep ? String.format(Locale.ROOT, "%.1f ms/step", seconds * 1e3)
        : String.format(Locale.ROOT, "%.1f us/sample", seconds * 1e6);
  }

  /** "no stragglers (...)" or one line per straggler with its breakdown and what to check. */
  @Override
  public String toString() {
    if (stragglers.isEmpty()) {
      return String.format(Locale.ROOT, "no stragglers (%s, %d rank(s), none %.0f%% or %.1f s slower than the "
          + "median busy time %s)", epochs, ranks.size(), threshold * 100, MIN_EXCESS_SECONDS, ms(medianBusy));
    }
    StringBuilder b = new StringBuilder();
    for (RankTime r : stragglers) {
      if (b.length() > 0) {
        b.append(System.lineSeparator());
      }
      String cause = cause(r);
      b.append(String.format(Locale.ROOT, "straggler: rank %d is %.0f%% slower than the median rank (%s): busy %s "
          + "(data wait %s, compute %s) vs median %s; comm %s; the other ranks waited ~%.1f s for it. Cause: %s; %s",
          r.rank(), r.aboveMedian() * 100, epochs, ms(r.busy()), ms(r.dataWait()), ms(r.compute()), ms(medianBusy),
          ms(r.comm()), excessSeconds(r), cause, hint(cause)));
    }
    return b.toString();
  }
}
