package dev.sparktrainer.spark;

import java.util.HashMap;
import java.util.Map;
import java.util.function.Consumer;
import org.apache.spark.TaskContext;

/**
 * Test hook for the reliability suite: makes one rank fail or stall at a given optimizer step of a given
 * stage attempt, so tests can prove that retries resume from checkpoints and that stalls fail fast. It is
 * armed only through the Spark local property {@value #PROPERTY} (set with
 * {@code sc.setLocalProperty} on the thread that calls fit), e.g. {@code "rank=1,step=7,attempt=0,action=throw"}
 * or {@code "rank=0,step=3,attempt=0,action=stall,seconds=60"}, or {@code action=halt}, which kills the
 * executor JVM (only in an executor process, never the driver: local-cluster tests); without it nothing
 * happens.
 */
final class FaultInjection {
  /** The local property that arms the hook. */
  static final String PROPERTY = "spark.trainer.faultInjection";

  private FaultInjection() {}

  /** A step listener for this task, or a no-op when the hook is not armed for this rank and attempt. */
  static Consumer<Long> forTask(TaskContext ctx, int rank) {
    String spec = ctx.getLocalProperty(PROPERTY);
    if (spec == null || spec.isBlank()) {
      return s -> { };
    }
    Map<String, String> kv = new HashMap<>();
    for (String part : spec.split(",")) {
      String[] p = part.split("=", 2);
      if (p.length != 2) {
        throw new IllegalArgumentException(PROPERTY + ": expected key=value pairs, got '" + spec + "'");
      }
      kv.put(p[0].trim(), p[1].trim());
    }
    int targetRank = Integer.parseInt(kv.getOrDefault("rank", "0"));
    long step = Long.parseLong(kv.getOrDefault("step", "1"));
    int attempt = Integer.parseInt(kv.getOrDefault("attempt", "0"));
    String action = kv.getOrDefault("action", "throw");
    long seconds = Long.parseLong(kv.getOrDefault("seconds", "3600"));
    if (rank != targetRank || ctx.stageAttemptNumber() != attempt) {
      return s -> { };
    }
    return s -> {
      if (s != step) {
        return;
      }
      if (action.equals("halt")) {
        if (!"driver".equals(org.apache.spark.SparkEnv.get().executorId())) {
          Runtime.getRuntime().halt(137); // as if the executor were killed (e.g. by the OOM killer)
        }
        throw new IllegalStateException("injected halt refused: rank " + rank + " runs inside the driver JVM");
      }
      if (action.equals("stall")) {
        try {
          Thread.sleep(seconds * 1000);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new IllegalStateException("injected stall of rank " + rank + " interrupted", e);
        }
      } else {
        throw new IllegalStateException("injected failure: rank " + rank + " at step " + step + " of attempt "
            + attempt);
      }
    };
  }
}
