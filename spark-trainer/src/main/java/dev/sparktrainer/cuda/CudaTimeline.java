package dev.sparktrainer.cuda;

import dev.sparktrainer.engine.StepTimeline;
import java.util.ArrayDeque;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Note [step timeline] (engine.StepTimeline) on a GPU: each mark records a timing event on the compute stream.
 * Marks are folded into the totals oldest first, once more than {@link #PENDING} are outstanding (the oldest
 * was recorded hundreds of marks ago, so its wait is over at once) and at {@link #drain}, so a long epoch
 * keeps a bounded number of events and marking never waits for the device in practice.
 */
final class CudaTimeline implements StepTimeline {
  static final int PENDING = 256;
  private final CudaDevice device;
  private final ArrayDeque<CudaEvent> pending = new ArrayDeque<>();
  private final ArrayDeque<String> labels = new ArrayDeque<>();
  private final ArrayDeque<CudaEvent> spare = new ArrayDeque<>();
  private final Map<String, Double> totals = new LinkedHashMap<>();
  private CudaEvent last; // the last folded event: where the next interval starts, or null
  private boolean closed;

  CudaTimeline(CudaDevice device) {
    this.device = device;
  }

  @Override
  public void mark(String phase) {
    if (closed) {
      throw new IllegalStateException("timeline of " + device.name() + " is closed");
    }
    device.checkNotCapturing("a timeline mark (a timed event)");
    if (pending.size() >= PENDING) {
      foldOldest();
    }
    CudaEvent e = spare.isEmpty() ? device.newEvent(true) : spare.pop();
    e.record(device.computeStream());
    pending.add(e);
    labels.add(phase);
  }

  private void foldOldest() {
    CudaEvent e = pending.poll();
    String label = labels.poll();
    e.synchronize();
    if (last != null) {
      totals.merge(label, (double) e.millisSince(last), Double::sum);
      spare.push(last);
    }
    last = e;
  }

  @Override
  public Map<String, Double> drain() {
    while (!pending.isEmpty()) {
      foldOldest();
    }
    Map<String, Double> out = new LinkedHashMap<>(totals);
    totals.clear();
    if (last != null) {
      spare.push(last);
      last = null;
    }
    return out;
  }

  @Override
  public void close() {
    if (closed) {
      return;
    }
    closed = true;
    for (CudaEvent e : pending) {
      e.close();
    }
    for (CudaEvent e : spare) {
      e.close();
    }
    if (last != null) {
      last.close();
    }
    pending.clear();
    spare.clear();
    last = null;
  }
}
