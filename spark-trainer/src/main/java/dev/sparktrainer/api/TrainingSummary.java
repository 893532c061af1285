package dev.sparktrainer.api;

import dev.sparktrainer.train.EpochStats;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * What a fit reports: per-epoch loss and accuracy (mean over all ranks' samples), global throughput, every
 * rank's timing breakdown, and the time from {@code fit()} to the first training step.
 */
public final class TrainingSummary implements Serializable {
  private static final long serialVersionUID = 1L;

  /** One epoch over all ranks. */
  public record Epoch(int epoch, double loss, double accuracy, double samplesPerSecond, double seconds)
      implements Serializable {}

  private final List<List<EpochStats>> perRank;
  private final List<Epoch> epochs;
  private final double fitToFirstStepSeconds;
  private final double totalSeconds;
  private final String device;

  public TrainingSummary(List<List<EpochStats>> perRank, double fitToFirstStepSeconds, double totalSeconds,
      String device) {
    this.perRank = List.copyOf(perRank);
    this.fitToFirstStepSeconds = fitToFirstStepSeconds;
    this.totalSeconds = totalSeconds;
    this.device = device;
    List<Epoch> out = new ArrayList<>();
    int n = perRank.isEmpty() ? 0 : perRank.get(0).size();
    for (int e = 0; e < n; e++) {
      double lossSum = 0;
      double accSum = 0;
      long samples = 0;
      double maxSeconds = 0;
      for (List<EpochStats> r : perRank) {
        EpochStats s = r.get(e);
        lossSum += s.loss() * s.samples();
        accSum += s.accuracy() * s.samples();
        samples += s.samples();
        maxSeconds = Math.max(maxSeconds, s.seconds());
      }
      out.add(new Epoch(e, lossSum / samples, accSum / samples, maxSeconds > 0 ? samples / maxSeconds : 0,
          maxSeconds));
    }
    this.epochs = List.copyOf(out);
  }

  /** Per-epoch figures over all ranks. */
  public List<Epoch> epochs() {
    return epochs;
  }

  /** Every rank's own epoch statistics (data wait, compute, communication), indexed by rank. */
  public List<List<EpochStats>> perRank() {
    return perRank;
  }

  /** Seconds from the call to fit() to the start of the first training step (slowest rank). */
  public double fitToFirstStepSeconds() {
    return fitToFirstStepSeconds;
  }

  public double totalSeconds() {
    return totalSeconds;
  }

  /** The device the ranks trained on, e.g. "cpu" or "cuda:0". */
  public String device() {
    return device;
  }

  @Override
  public String toString() {
    StringBuilder b = new StringBuilder();
    for (Epoch e : epochs) {
      b.append(String.format(Locale.ROOT, "epoch %d: loss %.4f, accuracy %.4f, %.0f samples/s%n", e.epoch() + 1,
          e.loss(), e.accuracy(), e.samplesPerSecond()));
    }
    b.append(String.format(Locale.ROOT, "fit -> first step %.2f s, total %.2f s on %d x %s", fitToFirstStepSeconds,
        totalSeconds, perRank.size(), device));
    return b.toString();
  }
}
