package dev.sparktrainer.data;

/** One batch in host memory: features (size x dim) and labels (size) or targets (size x targetDim). */
public final class HostBatch {
  public final float[] features;
  /** The features rounded to bf16 by the loader (Note [bf16 input on the loader threads]), or null. */
  public final short[] featuresBf16;
  public final int[] labels;
  public final float[] targets;
  public final int capacity;
  int size;

  public HostBatch(int capacity, int dim, int targetDim) {
    this(capacity, dim, targetDim, false);
  }

  /** With {@code bf16}, also a bf16 copy of the features that the loader fills ({@link #featuresBf16}). */
  public HostBatch(int capacity, int dim, int targetDim, boolean bf16) {
    this.capacity = capacity;
    this.features = new float[capacity * dim];
    this.featuresBf16 = bf16 ? new short[capacity * dim] : null;
    this.labels = targetDim == 0 ? new int[capacity] : null;
    this.targets = targetDim == 0 ? null : new float[capacity * targetDim];
  }

  /** Rows in this batch (<= capacity). */
  public int size() {
    return size;
  }
}
