package dev.sparktrainer.train;

import java.io.Serializable;

/**
 * One epoch on one rank: mean loss and accuracy over the rank's samples, samples/s of the rank, and where
 * the time went (data wait, compute, communication) in seconds.
 */
public record EpochStats(int epoch, int rank, long samples, double loss, double accuracy, double seconds,
    double dataWaitSeconds, double computeSeconds, double commSeconds) implements Serializable {

  /** Samples per second on this rank. */
  public double samplesPerSecond() {
    return seconds > 0 ? samples / seconds : 0;
  }
}
