package dev.sparktrainer.data;

/** One batch in host memory: features (size x dim) and labels (size) or targets (size x targetDim). */
public final class HostBatch {
  public final float[] features;
  public final int[] labels;
  public final float[] targets;
  public final int capacity;
  int size;

  public HostBatch(int capacity, int dim, int targetDim) {
    this.capacity = capacity;
    this.features = new float[capacity * dim];
    this.labels = targetDim == 0 ? new int[capacity] : null;
    this.targets = targetDim == 0 ? null : new float[capacity * targetDim];
  }

  /** Rows in this batch (<= capacity). */
  public int size() {
    return size;
  }
}
