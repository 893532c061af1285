package dev.sparktrainer.engine;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Note [step timeline]: where a training step's time goes on the device, measured without a profiler and
 * without serialising anything. {@link #mark} records the point the device's queue has reached (a timed CUDA
 * event on the compute stream; on a device that runs ops as they are called, the host clock); the interval
 * from one mark to the next is the device time spent on the work between them, including any time the device
 * sat idle there waiting for the host, for a copy, or for the comm stream. So with marks around forward,
 * backward, the wait for the gradient all-reduce and the optimizer, a 2-GPU step that is 1.3 ms longer than a
 * 1-GPU one says which part grew. The trainer marks its steps when asked (train.Trainer#stepTimeline).
 *
 * <p>One owner closes it. Not thread-safe: the thread that queues the device's work marks and drains.
 */
public interface StepTimeline extends AutoCloseable {

  /** Marks the current end of the device's queue; the interval since the previous mark is labelled {@code phase}. */
  void mark(String phase);

  /**
   * Waits for the marked work, then returns the device time per label summed over the intervals marked since
   * the last drain, in milliseconds, in the order the labels first appeared; clears them. The first mark after a
   * drain only starts the next interval.
   */
  Map<String, Double> drain();

  /** Frees the timeline's resources. Idempotent. */
  @Override
  void close();

  /**
   * A timeline on the host clock: right for a device whose ops are done when their call returns (the CPU
   * engine); for an asynchronous device it would time the host's queueing, not the device.
   */
  static StepTimeline hostClock() {
    return new StepTimeline() {
      private final Map<String, Double> totals = new LinkedHashMap<>();
      private long last = -1;

      @Override
      public void mark(String phase) {
        long now = System.nanoTime();
        if (last >= 0) {
          totals.merge(phase, (now - last) / 1e6, Double::sum);
        }
        last = now;
      }

      @Override
      public Map<String, Double> drain() {
        Map<String, Double> out = new LinkedHashMap<>(totals);
        totals.clear();
        last = -1;
        return out;
      }

      @Override
      public void close() {}
    };
  }
}
