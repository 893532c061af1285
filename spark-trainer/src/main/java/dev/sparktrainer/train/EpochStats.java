package dev.sparktrainer.train;

import java.io.Serializable;

/**
 * One epoch on one rank: mean loss and accuracy over the rank's samples, samples/s of the rank, and where
 * the time went (data wait, compute, communication) in seconds, and how many optimizer steps were skipped
 * for non-finite gradients.
 */
public record EpochStats(int epoch, int rank, long samples, double loss, double accuracy, double seconds,
    double dataWaitSeconds, double computeSeconds, double commSeconds, long skippedSteps) implements Serializable {

  /** Samples per second on this rank. */
  public double samplesPerSecond() {
    return seconds > 0 ? samples / seconds : 0;
  }
}
