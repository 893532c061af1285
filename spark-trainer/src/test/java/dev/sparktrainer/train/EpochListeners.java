package dev.sparktrainer.train;

import java.util.function.Consumer;

/** Epoch listeners for tests of failed fits. */
public final class EpochListeners {
  private EpochListeners() {}

  /** A listener whose first call throws IllegalStateException ("the listener fails once"); later calls do nothing. */
  public static Consumer<EpochStats> failingOnce() {
    boolean[] failed = {false};
    return e -> {
      if (!failed[0]) {
        failed[0] = true;
        throw new IllegalStateException("the listener fails once");
      }
    };
  }
}
