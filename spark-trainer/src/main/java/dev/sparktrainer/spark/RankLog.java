package dev.sparktrainer.spark;

import java.util.ArrayDeque;
import java.util.Locale;

/**
 * The last lines of what one rank did (phases, steps, epochs), kept in memory so that a failing rank can put
 * the tail into its error, which Spark carries to the driver's {@code TrainingException}.
 */
final class RankLog {
  /** Starts the tail inside a task's error message; the driver looks for it. */
  static final String MARKER = "-- last log lines of rank ";
  private static final int KEEP = 12;
  private final int rank;
  private final long start = System.nanoTime();
  private final ArrayDeque<String> lines = new ArrayDeque<>(KEEP);

  RankLog(int rank) {
    this.rank = rank;
  }

  synchronized void add(String line) {
    if (lines.size() == KEEP) {
      lines.removeFirst();
    }
    lines.addLast(String.format(Locale.ROOT, "%8.3f s  %s", (System.nanoTime() - start) / 1e9, line));
  }

  /** A step listener that logs each finished optimizer step. */
  java.util.function.Consumer<Long> stepLogger() {
    return s -> add("step " + s + " done");
  }

  /** The error a failing rank throws: its own first line, then the tail. */
  synchronized IllegalStateException failure(String what, Throwable cause) {
    StringBuilder b = new StringBuilder("rank ").append(rank).append(' ').append(what).append(": ").append(cause)
        .append('\n').append(MARKER).append(rank).append(" --");
    for (String l : lines) {
      b.append('\n').append(l);
    }
    return new IllegalStateException(b.toString(), cause);
  }
}
