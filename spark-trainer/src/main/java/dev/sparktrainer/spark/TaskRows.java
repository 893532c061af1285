package dev.sparktrainer.spark;

import dev.sparktrainer.data.ArrowRowStore;
import dev.sparktrainer.data.RowStore;
import java.util.Iterator;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import scala.Tuple2;

/**
 * A task's rows as Arrow record batches of B rows in off-heap memory (features array&lt;float&gt;, then label
 * int or target array&lt;float&gt;), decoded from the rank's chunks (Note [rows to ranks] in {@link RankChunks}):
 * its training rows and, when the fit has a validation set, its shard of the validation rows. Closing the
 * result frees everything and reports a leak if something is still held.
 */
final class TaskRows {
  private TaskRows() {}

  /**
   * A rank's rows: the training store (in arrival order) with {@code local}, the store row at each local
   * position, which is what {@code Trainer.fit} iterates; and the rank's validation shard in local order
   * (null when the fit has no validation set).
   */
  record Loaded(RowStore store, int[] local, RowStore validation) implements AutoCloseable {
    /** Closes the validation shard, then the training store (which owns the allocator of both). */
    @Override
    public void close() {
      try {
        if (validation != null) {
          validation.close();
        }
      } finally {
        store.close();
      }
    }
  }

  /**
   * Decodes {@code rank}'s chunks (keys: {@code rank} for training rows, {@code world + rank} for validation
   * rows) into Arrow stores of {@code batch}-row batches: {@code rowsPerRank} training rows and
   * {@code validationRows} validation rows ({@code < 0}: the fit has no validation set).
   */
  static Loaded load(Iterator<Tuple2<Integer, byte[]>> chunks, int rank, int world, int rowsPerRank,
      int validationRows, int dim, int targetDim, int batch) {
    BufferAllocator root = new RootAllocator(Long.MAX_VALUE);
    ArrowRowStore train = null;
    ArrowRowStore val = null;
    try {
      int[] local;
      int[] vlocal = null;
      try (ArrowRowStore.Builder tb = ArrowRowStore.builder(dim, targetDim, batch, root).expectedRows(rowsPerRank);
          ArrowRowStore.Builder vb = ArrowRowStore.builder(dim, targetDim, batch, root)
              .expectedRows(Math.max(0, validationRows))) {
        RankChunks.Decoder td = new RankChunks.Decoder("training rows", rank, rowsPerRank, dim, targetDim, sink(tb,
            targetDim));
        RankChunks.Decoder vd = validationRows < 0 ? null
            : new RankChunks.Decoder("validation rows", rank, validationRows, dim, targetDim, sink(vb, targetDim));
        while (chunks.hasNext()) {
          Tuple2<Integer, byte[]> c = chunks.next();
          int key = c._1();
          if (key == rank) {
            td.accept(c._2());
          } else if (key == world + rank && vd != null) {
            vd.accept(c._2());
          } else {
            throw new IllegalStateException("rank " + rank + " received a chunk for key " + key + " (expected "
                + rank + (vd != null ? " or " + (world + rank) : "") + "); the exchange is broken, please report this");
          }
        }
        local = td.finish();
        if (vd != null) {
          vlocal = vd.finish();
        }
        train = tb.build();
        val = vb.build();
      }
      RowStore validation = null;
      if (vlocal != null) {
        validation = new InOrder(val, vlocal);
      } else {
        val.close();
      }
      val = null;
      return new Loaded(owning(train, root), local, validation);
    } catch (RuntimeException | Error e) {
      try {
        closeAll(train, val);
      } finally {
        root.close();
      }
      throw e;
    }
  }

  private static RankChunks.RowSink sink(ArrowRowStore.Builder b, int targetDim) {
    return targetDim == 0 ? (features, label, target) -> b.append(features, label)
        : (features, label, target) -> b.append(features, target);
  }

  private static void closeAll(RowStore a, RowStore b) {
    try {
      if (a != null) {
        a.close();
      }
    } finally {
      if (b != null) {
        b.close();
      }
    }
  }

  /** A store read in the order of {@code order}: row i of this view is row order[i] of the store. */
  static final class InOrder implements RowStore {
    private final RowStore store;
    private final int[] order;

    InOrder(RowStore store, int[] order) {
      if (order.length != store.rows()) {
        throw new IllegalArgumentException("order has " + order.length + " rows, the store " + store.rows());
      }
      this.store = store;
      this.order = order;
    }

    @Override
    public int rows() {
      return order.length;
    }

    @Override
    public int dim() {
      return store.dim();
    }

    @Override
    public int targetDim() {
      return store.targetDim();
    }

    @Override
    public void gather(int[] idx, int from, int count, float[] features, int[] labels, float[] targets) {
      int[] scratch = new int[count]; // per call: loader threads gather at once (Note [loader threads])
      for (int k = 0; k < count; k++) {
        scratch[k] = order[idx[from + k]];
      }
      store.gather(scratch, 0, count, features, labels, targets);
    }

    @Override
    public void close() {
      store.close();
    }
  }

  /** The store, closing {@code root} after it. */
  private static RowStore owning(ArrowRowStore store, BufferAllocator root) {
    return new RowStore() {
      @Override
      public int rows() {
        return store.rows();
      }

      @Override
      public int dim() {
        return store.dim();
      }

      @Override
      public int targetDim() {
        return store.targetDim();
      }

      @Override
      public void gather(int[] idx, int from, int count, float[] features, int[] labels, float[] targets) {
        store.gather(idx, from, count, features, labels, targets);
      }

      @Override
      public void close() {
        try {
          store.close();
        } finally {
          root.close();
        }
      }
    };
  }
}
