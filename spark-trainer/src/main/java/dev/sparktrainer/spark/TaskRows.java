package dev.sparktrainer.spark;

import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.RowStore;
import java.util.Iterator;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.util.ArrayData;

/** Builds a task's row store from its partition's rows (features array<float>, then label int or target). */
final class TaskRows {
  private TaskRows() {}

  static RowStore load(Iterator<InternalRow> rows, int dim, int targetDim, int batch) {
    java.util.ArrayList<float[]> feats = new java.util.ArrayList<>();
    java.util.ArrayList<Object> labels = new java.util.ArrayList<>();
    int n = 0;
    while (rows.hasNext()) {
      InternalRow r = rows.next();
      ArrayData a = r.getArray(0);
      if (a.numElements() != dim) {
        throw new IllegalStateException("row " + n + " has " + a.numElements() + " features, expected " + dim);
      }
      feats.add(a.toFloatArray());
      labels.add(targetDim == 0 ? (Object) r.getInt(1) : r.getArray(1).toFloatArray());
      n++;
    }
    float[] f = new float[n * dim];
    for (int i = 0; i < n; i++) {
      System.arraycopy(feats.get(i), 0, f, i * dim, dim);
    }
    if (targetDim == 0) {
      int[] l = new int[n];
      for (int i = 0; i < n; i++) {
        l[i] = (Integer) labels.get(i);
      }
      return new HeapRowStore(f, l, dim);
    }
    float[] t = new float[n * targetDim];
    for (int i = 0; i < n; i++) {
      System.arraycopy((float[]) labels.get(i), 0, t, i * targetDim, targetDim);
    }
    return new HeapRowStore(f, t, dim, targetDim);
  }
}
