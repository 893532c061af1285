package dev.sparktrainer.data;

import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * Produces batches from a {@link RowStore} in a given row order, on a background thread that stays {@code
 * depth} batches ahead of training. The order comes in segments (the trainer's epochs, each with its own
 * shuffle): the producer goes from one segment to the next without a pause, so the first batch of an epoch is
 * gathered while the last steps of the one before still run, and the buffers are allocated once for all of
 * them (Note [one loader per fit] in train.Trainer). The time {@link #next()} spends waiting is reported as
 * data wait. A failure in the producer is rethrown by {@code next()}; {@link #close()} stops the producer.
 */
public final class BatchLoader implements AutoCloseable {
  private static final Object END = new Object();
  private final RowStore store;
  private final int batch;
  private final int segments;
  private final java.util.function.IntFunction<Segment> segment;
  private final BlockingQueue<Object> ready;
  private final BlockingQueue<HostBatch> free;
  private final Thread producer;
  private volatile boolean closed;
  private long waitNanos;
  private HostBatch current;
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

  /**
   * One segment: the batches of {@code order}.
   *
   * @param order row indices in training order; step t uses order[t*batch .. (t+1)*batch)
   * @param steps number of batches (order.length >= steps*batch)
   */
  public BatchLoader(RowStore store, int[] order, int batch, int steps, int depth) {
    this(store, batch, depth, 1, checked(new Segment(order, steps), batch));
  }

  /**
   * The batches of {@code segments} segments, one after the other: {@code segment.apply(i)} gives segment i,
   * called on the producer thread when it gets there (so a segment's order, e.g. an epoch's shuffle, is made
   * while training runs). A segment too short for its steps fails like any other producer error.
   */
  public BatchLoader(RowStore store, int batch, int depth, int segments,
      java.util.function.IntFunction<Segment> segment) {
    if (batch <= 0 || depth < 0 || segments < 0) {
      throw new IllegalArgumentException("batch loader: batch " + batch + ", depth " + depth + ", segments "
          + segments + " (batch > 0, depth >= 0, segments >= 0)");
    }
    this.store = store;
    this.batch = batch;
    this.segments = segments;
    this.segment = segment;
    this.ready = new ArrayBlockingQueue<>(depth + 2);
    this.free = new ArrayBlockingQueue<>(depth + 2);
    for (int k = 0; k < depth + 1; k++) {
      free.add(new HostBatch(batch, store.dim(), store.targetDim()));
    }
    this.producer = new Thread(this::produce, "batch-prefetch");
    producer.setDaemon(true);
    producer.start();
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

  private void produce() {
    try {
      for (int i = 0; i < segments && !closed; i++) {
        Segment seg = segment.apply(i);
        check(seg, batch);
        for (int t = 0; t < seg.steps() && !closed; t++) {
          HostBatch b = free.take();
          store.gather(seg.order(), t * batch, batch, b.features, b.labels, b.targets);
          b.size = batch;
          ready.put(b);
        }
      }
      ready.put(END);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    } catch (Throwable e) {
      ready.offer(e);
    }
  }

  /** The next batch (valid until the following call), or null after the last one. */
  public HostBatch next() {
    if (current != null) {
      free.add(current);
      current = null;
    }
    if (ended) {
      return null;
    }
    long t0 = System.nanoTime();
    Object o;
    try {
      while ((o = ready.poll(100, TimeUnit.MILLISECONDS)) == null) {
        if (!producer.isAlive() && ready.isEmpty()) {
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
      ended = true;
      return null;
    }
    if (o instanceof Throwable e) {
      throw new IllegalStateException("loading a batch failed: " + e, e);
    }
    current = (HostBatch) o;
    return current;
  }

  /** Total time next() waited for data, in nanoseconds. */
  public long waitNanos() {
    return waitNanos;
  }

  @Override
  public void close() {
    closed = true;
    producer.interrupt();
    try {
      producer.join(10_000);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
