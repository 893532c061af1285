package dev.sparktrainer.data;

import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * Produces the batches of one epoch from a {@link RowStore} in a given row order, on a background thread
 * that stays {@code depth} batches ahead of training. Buffers are recycled (no allocation per step). The
 * time {@link #next()} spends waiting is reported as data wait. A failure in the producer is rethrown by
 * {@code next()}; {@link #close()} stops the producer.
 */
public final class BatchLoader implements AutoCloseable {
  private static final Object END = new Object();
  private final RowStore store;
  private final int[] order;
  private final int batch;
  private final int steps;
  private final BlockingQueue<Object> ready;
  private final BlockingQueue<HostBatch> free;
  private final Thread producer;
  private volatile boolean closed;
  private long waitNanos;
  private HostBatch current;

  /**
   * @param order row indices in training order; step t uses order[t*batch .. (t+1)*batch)
   * @param steps number of batches (order.length >= steps*batch)
   */
  public BatchLoader(RowStore store, int[] order, int batch, int steps, int depth) {
    if ((long) steps * batch > order.length) {
      throw new IllegalArgumentException(steps + " steps of " + batch + " need " + (long) steps * batch
          + " rows, the order has " + order.length);
    }
    this.store = store;
    this.order = order;
    this.batch = batch;
    this.steps = steps;
    this.ready = new ArrayBlockingQueue<>(depth + 2);
    this.free = new ArrayBlockingQueue<>(depth + 2);
    for (int k = 0; k < depth + 1; k++) {
      free.add(new HostBatch(batch, store.dim(), store.targetDim()));
    }
    this.producer = new Thread(this::produce, "batch-prefetch");
    producer.setDaemon(true);
    producer.start();
  }

  private void produce() {
    try {
      for (int t = 0; t < steps && !closed; t++) {
        HostBatch b = free.take();
        store.gather(order, t * batch, batch, b.features, b.labels, b.targets);
        b.size = batch;
        ready.put(b);
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
