package dev.sparktrainer.spark;

import dev.sparktrainer.data.ArrowRowStore;
import dev.sparktrainer.data.RowStore;
import java.util.Iterator;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.spark.sql.catalyst.InternalRow;

/**
 * A task's rows as Arrow record batches of B rows in off-heap memory (features array&lt;float&gt;, then label
 * int or target array&lt;float&gt;), filled by bulk copies from Spark's binary rows. The returned store owns
 * its allocator: closing it frees everything and reports a leak if something is still held.
 */
final class TaskRows {
  private TaskRows() {}

  static RowStore load(Iterator<InternalRow> rows, int dim, int targetDim, int batch) {
    BufferAllocator root = new RootAllocator(Long.MAX_VALUE);
    ArrowRowStore store;
    try {
      store = ArrowRowStore.fromInternalRows(rows, dim, targetDim, batch, root);
    } catch (RuntimeException | Error e) {
      root.close();
      throw e;
    }
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
