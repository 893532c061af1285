package dev.sparktrainer.train;

import java.io.Serializable;

/**
 * Where and how often rank 0 writes checkpoints: every {@code interval} optimizer steps (0 = only at epoch
 * ends) and at every epoch end, into {@code dir} (any Hadoop path), keeping the newest {@code keep} files.
 */
public record CheckpointPolicy(String dir, int interval, int keep) implements Serializable {
  public CheckpointPolicy {
    if (dir == null || dir.isBlank()) {
      throw new IllegalArgumentException("checkpoint directory must be set");
    }
    if (interval < 0) {
      throw new IllegalArgumentException("checkpoint interval must be >= 0 (0 = at epoch ends), got " + interval);
    }
    if (keep < 1) {
      throw new IllegalArgumentException("checkpoints to keep must be >= 1, got " + keep);
    }
  }
}
