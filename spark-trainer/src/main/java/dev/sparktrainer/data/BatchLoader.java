package dev.sparktrainer.data;

import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * Produces batches from a {@link RowStore} in a given row order, on background threads that stay about {@code
 * depth} batches ahead of training. The order comes in segments (the trainer's epochs, each with its own
 * shuffle): the producer goes from one segment to the next without a pause, so the first batch of an epoch is
 * gathered while the last steps of the one before still run, and the buffers are allocated once for all of
 * them (Note [one loader per fit] in train.Trainer). The time {@link #next()} spends waiting is reported as
 * data wait. A failure in a producer is rethrown by {@code next()}; {@link #close()} stops the producers.
 *
 * <p>Note [loader threads]: with {@code threads} producers, producer j gathers the batches whose index in the
 * whole sequence (over all segments) is j modulo threads, into buffers of its own (ceil(depth / threads) + 1
 * each), and {@code next()} takes them from the producers in turn, so the batches come in the same order with the
 * same rows whatever the number of threads. Why: one thread gathering a ResNet-50 batch (256 x 3 x 224 x 224
 * floats, 154 MB) takes a good part of a 53 ms step, and two ranks' loaders of the small CNN at ~1,500 steps/s
 * each did not keep up on 2x H100 (13.8% data wait at W = 2 with CUDA graphs). Each segment is made once (by the
 * first producer to reach it) and shared. {@link RowStore#gather} is called from several threads at once, each
 * with its own destination arrays.
 *
 * <p>Note [bf16 input on the loader threads]: when the trainer stages its input in bf16 (Note [bf16 input] in
 * nn.Model), the producer also rounds each batch's features to bf16 ({@link HostBatch#featuresBf16}, engine.Bf16,
 * the rounding every engine uses), so the trainer's thread only copies them (Device#prefetchBf16). Measured on
 * the development machine (benchmarks/results/2026-11-26-diagnostics/Bf16Staging.java), a Fashion-MNIST CNN batch
 * (512 x 784): 0.70-0.79 ms of rounding on the trainer's thread, longer than the model's whole step on an H100,
 * becomes 0.68 ms on a loader thread and a 0.023-0.032 ms copy on the trainer's. On 2 H100s (ours only, one call)
 * it did not pay: small-cnn 956k / 1.43M samples/s at W = 1 / 2 against 967k / 1.40M without, and ResNet-50 at W = 2
 * fell from 9,421 to 8,381 img/s, its rank threads waiting 53% of the time for loader threads that now also round
 * 38.5M values per batch. So bf16 input stays opt-in (-Dsparktrainer.train.bf16Input=true).
 *
 * <p>Note [loader depth]: the trainer's loader stays {@link #defaultDepth} batches ahead: as many as fit in 64 MiB,
 * between 2 and 8 (the Fashion-MNIST CNN's 1.6 MB batches: 8; the benchmark MLP's 16 MB: 4; ResNet-50's 154 MB:
 * 2, as before). Why: at W = 2 the small CNN's rank thread waited 19-24% of its time for the loader while the
 * loader kept up on average (two ranks without communication ran at 97% of twice one rank's speed); a depth of 2
 * batches is ~1 ms of slack at ~0.5 ms per step, less than the threads' scheduling hiccups, and every wait of one
 * rank holds the other at the next all-reduce (benchmarks/README.md). Measured on 2 H100s (small-cnn W = 2, ours
 * only, one call): depth 2: 1.58M samples/s, depth 8: 1.72M and 1.66M. The host's wait for the loader did not
 * fall steadily (9% at depth 2, 9-19% at depth 8, 0.5% at depth 8 with Note [bucket wait lag]'s lag 2), so the gain
 * is smaller than the wait suggested and within two runs' spread of each other.
 */
public final class BatchLoader implements AutoCloseable {
  /** -Dsparktrainer.data.loaderThreads: the trainer's producer threads per loader (default 2). */
  public static final String THREADS_PROPERTY = "sparktrainer.data.loaderThreads";
  private static final Object END = new Object();
  private final RowStore store;
  private final int batch;
  private final int segments;
  private final java.util.function.IntFunction<Segment> segment;
  private final int threads;
  private final BlockingQueue<Object>[] ready; // per producer
  private final BlockingQueue<HostBatch>[] free; // per producer
  private final Thread[] producers;
  private final java.util.Map<Integer, Segment> made = new java.util.HashMap<>(); // segments not yet fetched by all
  private final java.util.Map<Integer, Integer> fetched = new java.util.HashMap<>();
  private volatile boolean closed;
  private long waitNanos;
  private long served; // batches next() has returned
  private HostBatch current;
  private int currentOwner;
  private boolean ended; // next() has returned the end

  /**
   * One part of the row order: its step t uses {@code order[t * batch .. (t + 1) * batch)}, for {@code steps}
   * steps ({@code order.length >= steps * batch}).
   */
  public record Segment(int[] order, int steps) {
    public Segment {
      if (steps < 0) {
        throw new IllegalArgumentException("a segment needs steps >= 0, got " + steps);
      }
    }
  }

  /** -Dsparktrainer.data.loaderDepth: the trainer's loader depth in batches (default: {@link #defaultDepth}). */
  public static final String DEPTH_PROPERTY = "sparktrainer.data.loaderDepth";

  /** The host memory the trainer's default depth aims its batches at: 64 MiB. */
  public static final long DEPTH_BYTES = 64L << 20;

  /**
   * The trainer's loader depth for batches of {@code batchBytes} bytes: {@value #DEPTH_PROPERTY} if set, else as many
   * batches as fit in {@link #DEPTH_BYTES}, between 2 and 8 (Note [loader depth]).
   */
  public static int defaultDepth(long batchBytes) {
    Integer set = Integer.getInteger(DEPTH_PROPERTY);
    if (set != null) {
      if (set < 0) {
        throw new IllegalArgumentException("-D" + DEPTH_PROPERTY + " must be >= 0 batches, got " + set);
      }
      return set;
    }
    return (int) Math.max(2, Math.min(8, DEPTH_BYTES / Math.max(1, batchBytes)));
  }

  /** The trainer's number of producer threads: {@value #THREADS_PROPERTY}, else 2. */
  public static int defaultThreads() {
    return Integer.getInteger(THREADS_PROPERTY, 2);
  }

  /**
   * One segment: the batches of {@code order}, one producer thread.
   *
   * @param order row indices in training order; step t uses order[t*batch .. (t+1)*batch)
   * @param steps number of batches (order.length >= steps*batch)
   */
  public BatchLoader(RowStore store, int[] order, int batch, int steps, int depth) {
    this(store, batch, depth, 1, checked(new Segment(order, steps), batch));
  }

  /** {@link #BatchLoader(RowStore, int, int, int, java.util.function.IntFunction, int)} with one producer. */
  public BatchLoader(RowStore store, int batch, int depth, int segments,
      java.util.function.IntFunction<Segment> segment) {
    this(store, batch, depth, segments, segment, 1);
  }

  /**
   * The batches of {@code segments} segments, one after the other: {@code segment.apply(i)} gives segment i,
   * called on a producer thread when the first one gets there (so a segment's order, e.g. an epoch's shuffle, is
   * made while training runs), once. A segment too short for its steps fails like any other producer error.
   * {@code threads} producers share the work (Note [loader threads]).
   */
  public BatchLoader(RowStore store, int batch, int depth, int segments,
      java.util.function.IntFunction<Segment> segment, int threads) {
    this(store, batch, depth, segments, segment, threads, false);
  }

  /**
   * As {@link #BatchLoader(RowStore, int, int, int, java.util.function.IntFunction, int)}; with {@code bf16Features}
   * the producers also round each batch's features to bf16 (Note [bf16 input on the loader threads]).
   */
  @SuppressWarnings("unchecked")
  public BatchLoader(RowStore store, int batch, int depth, int segments,
      java.util.function.IntFunction<Segment> segment, int threads, boolean bf16Features) {
    if (batch <= 0 || depth < 0 || segments < 0 || threads < 1) {
      throw new IllegalArgumentException("batch loader: batch " + batch + ", depth " + depth + ", segments "
          + segments + ", threads " + threads + " (batch > 0, depth >= 0, segments >= 0, threads >= 1)");
    }
    this.store = store;
    this.batch = batch;
    this.segments = segments;
    this.segment = segment;
    this.threads = threads;
    int each = (depth + threads - 1) / threads + 1; // buffers per producer
    this.ready = new BlockingQueue[threads];
    this.free = new BlockingQueue[threads];
    this.producers = new Thread[threads];
    for (int j = 0; j < threads; j++) {
      ready[j] = new ArrayBlockingQueue<>(each + 1);
      free[j] = new ArrayBlockingQueue<>(each + 1);
      for (int k = 0; k < each; k++) {
        free[j].add(new HostBatch(batch, store.dim(), store.targetDim(), bf16Features));
      }
    }
    for (int j = 0; j < threads; j++) {
      int me = j;
      producers[j] = new Thread(() -> produce(me), threads == 1 ? "batch-prefetch" : "batch-prefetch-" + j);
      producers[j].setDaemon(true);
      producers[j].start();
    }
  }

  private static java.util.function.IntFunction<Segment> checked(Segment s, int batch) {
    check(s, batch);
    return i -> s;
  }

  private static void check(Segment s, int batch) {
    if ((long) s.steps() * batch > s.order().length) {
      throw new IllegalArgumentException(s.steps() + " steps of " + batch + " need " + (long) s.steps() * batch
          + " rows, the order has " + s.order().length);
    }
  }

  /** Segment i, made by the first producer that asks and dropped once every producer has it. */
  private Segment segment(int i) {
    synchronized (made) {
      Segment s = made.get(i);
      if (s == null) {
        s = segment.apply(i);
        made.put(i, s);
      }
      if (fetched.merge(i, 1, Integer::sum) == threads) {
        made.remove(i);
        fetched.remove(i);
      }
      return s;
    }
  }

  private void produce(int me) {
    try {
      long g = 0; // index of the next batch in the whole sequence
      for (int i = 0; i < segments && !closed; i++) {
        Segment seg = segment(i);
        check(seg, batch);
        for (int t = 0; t < seg.steps() && !closed; t++, g++) {
          if (g % threads != me) {
            continue;
          }
          HostBatch b = free[me].take();
          store.gather(seg.order(), t * batch, batch, b.features, b.labels, b.targets);
          if (b.featuresBf16 != null) {
            dev.sparktrainer.engine.Bf16.bits(b.features, 0, b.featuresBf16, 0, batch * store.dim());
          }
          b.size = batch;
          ready[me].put(b);
        }
      }
      ready[me].put(END);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    } catch (Throwable e) {
      ready[me].offer(e);
    }
  }

  /**
   * The next batch, or null at the end. The batch returned stays valid until the next call (which gives its
   * buffer back to its producer).
   *
   * @throws IllegalStateException when a producer failed (its error is the cause)
   */
  public HostBatch next() {
    if (current != null) {
      free[currentOwner].add(current);
      current = null;
    }
    if (ended) {
      return null;
    }
    int j = (int) (served % threads); // the producer of batch number `served` (Note [loader threads])
    long t0 = System.nanoTime();
    Object o;
    try {
      while ((o = ready[j].poll(100, TimeUnit.MILLISECONDS)) == null) {
        if (!producers[j].isAlive() && ready[j].isEmpty()) {
          throw new IllegalStateException("batch prefetch thread ended without a result");
        }
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted while waiting for a batch", e);
    } finally {
      waitNanos += System.nanoTime() - t0;
    }
    if (o == END) {
      ended = true; // producer j has no batch number `served`: the sequence ends here
      return null;
    }
    if (o instanceof Throwable e) {
      throw new IllegalStateException("loading a batch failed: " + e, e);
    }
    current = (HostBatch) o;
    currentOwner = j;
    served++;
    return current;
  }

  /** Total time {@link #next()} has spent waiting for a batch, in nanoseconds. */
  public long waitNanos() {
    return waitNanos;
  }

  @Override
  public void close() {
    closed = true;
    for (Thread p : producers) {
      p.interrupt();
    }
    try {
      for (Thread p : producers) {
        p.join(10_000);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
