package dev.sparktrainer.comm;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Function;

/**
 * Runs W workers as threads of this JVM, each with a {@link WorkerContext} whose rendezvous is in-process.
 * Used where Spark is not installed (tests, the GPU machine's benchmarks). GPU for rank r: r % gpuCount,
 * or -1 when gpuCount is 0.
 */
public final class LocalLauncher {
  private LocalLauncher() {}

  /**
   * Runs {@code worker} on W threads and returns their results by rank. If any worker throws, the first
   * failure (by rank) is rethrown after all workers have ended or {@code timeoutSeconds} has passed.
   */
  public static <T> List<T> run(int worldSize, int gpuCount, long timeoutSeconds,
      Function<WorkerContext, T> worker) {
    if (worldSize <= 0) {
      throw new IllegalArgumentException("worldSize must be > 0, got " + worldSize);
    }
    Rendezvous rv = new Rendezvous(worldSize, timeoutSeconds);
    String token = UUID.randomUUID().toString();
    ExecutorService pool = Executors.newFixedThreadPool(worldSize, r -> {
      Thread t = new Thread(r);
      t.setDaemon(true);
      return t;
    });
    try {
      List<Future<T>> futures = new ArrayList<>();
      for (int r = 0; r < worldSize; r++) {
        int rank = r;
        int gpu = gpuCount > 0 ? rank % gpuCount : -1;
        futures.add(pool.submit(() -> {
          Thread.currentThread().setName("worker-" + rank);
          return worker.apply(new Local(rank, worldSize, gpu, rv, token));
        }));
      }
      List<T> out = new ArrayList<>();
      RuntimeException first = null;
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);
      for (int r = 0; r < worldSize; r++) {
        try {
          out.add(futures.get(r).get(Math.max(1, deadline - System.nanoTime()), TimeUnit.NANOSECONDS));
        } catch (ExecutionException e) {
          if (first == null) {
            Throwable c = e.getCause();
            first = c instanceof RuntimeException re ? re : new RuntimeException("rank " + r + " failed", c);
          }
          out.add(null);
        } catch (TimeoutException e) {
          if (first == null) {
            first = new CommunicatorException("rank " + r + " did not finish within " + timeoutSeconds + " s");
          }
          out.add(null);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new IllegalStateException("interrupted while waiting for workers", e);
        }
      }
      if (first != null) {
        throw first;
      }
      return out;
    } finally {
      pool.shutdownNow();
    }
  }

  /** In-process allGather: a generation-counted exchange with a timeout. */
  static final class Rendezvous {
    private final int n;
    private final long timeoutNanos;
    private String[] slots;
    private int arrived;
    private long generation;
    private String[] result;

    Rendezvous(int n, long timeoutSeconds) {
      this.n = n;
      this.timeoutNanos = TimeUnit.SECONDS.toNanos(timeoutSeconds);
      this.slots = new String[n];
    }

    synchronized List<String> allGather(int rank, String msg) {
      long gen = generation;
      slots[rank] = msg;
      arrived++;
      if (arrived == n) {
        result = slots;
        slots = new String[n];
        arrived = 0;
        generation++;
        notifyAll();
        return Arrays.asList(result.clone());
      }
      long deadline = System.nanoTime() + timeoutNanos;
      while (generation == gen) {
        long left = deadline - System.nanoTime();
        if (left <= 0) {
          throw new CommunicatorException("rank " + rank + ": allGather timed out waiting for "
              + (n - arrived) + " rank(s)");
        }
        try {
          TimeUnit.NANOSECONDS.timedWait(this, left);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new CommunicatorException("rank " + rank + ": interrupted in allGather", e);
        }
      }
      return Arrays.asList(result.clone());
    }
  }

  private record Local(int rank, int worldSize, int gpu, Rendezvous rv, String jobToken) implements WorkerContext {
    @Override
    public List<String> allGather(String message) {
      return rv.allGather(rank, message);
    }
  }
}
