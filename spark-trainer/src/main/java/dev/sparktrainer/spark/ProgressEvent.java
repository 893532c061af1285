package dev.sparktrainer.spark;

import dev.sparktrainer.train.EpochStats;

/** What a rank reports to the driver while it trains (see {@link ProgressReporter}, {@link ProgressServer}). */
public sealed interface ProgressEvent {
  /** The authenticated rank that sent the event. */
  int rank();

  /**
   * After optimizer step {@code step} (1-based, counted over the whole fit; the same on every rank) of
   * {@code totalSteps}, in epoch {@code epoch} (0-based) of {@code epochs}: the rank's samples and seconds
   * since this task attempt started training, the ETA that rate gives, and the loss (NaN when not known).
   */
  record Step(int rank, int epoch, int epochs, long step, long totalSteps, long samples, double seconds,
      double etaSeconds, double loss) implements ProgressEvent {

    /** This rank's samples per second in this task attempt. */
    public double samplesPerSecond() {
      return seconds > 0 ? samples / seconds : 0;
    }
  }

  /** A finished epoch with the rank's statistics (loss, accuracy, data wait / compute / comm). */
  record Epoch(int rank, EpochStats stats) implements ProgressEvent {}

  /**
   * The validation figures of epoch {@code epoch} (0-based) over all ranks' shards: the same on every rank,
   * so only rank 0 sends them. Accuracy is NaN for regression (mse).
   */
  record Validation(int rank, int epoch, long rows, double loss, double accuracy) implements ProgressEvent {}

  /** The rank finished training: its peak device memory (-1 when the device does not report it). */
  record Done(int rank, long peakDeviceMemoryBytes, String device) implements ProgressEvent {}
}
