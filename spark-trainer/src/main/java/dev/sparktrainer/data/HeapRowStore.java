package dev.sparktrainer.data;

/** Rows held in Java arrays (the local trainer, tests, evaluation). */
public final class HeapRowStore implements RowStore {
  private final float[] features; // (rows, dim)
  private final int[] labels; // (rows) or null
  private final float[] targets; // (rows, targetDim) or null
  private final int rows;
  private final int dim;
  private final int targetDim;

  /** Classification rows. */
  public HeapRowStore(float[] features, int[] labels, int dim) {
    this(features, labels, null, dim, 0);
  }

  /** Regression rows. */
  public HeapRowStore(float[] features, float[] targets, int dim, int targetDim) {
    this(features, null, targets, dim, targetDim);
  }

  private HeapRowStore(float[] features, int[] labels, float[] targets, int dim, int targetDim) {
    if (dim <= 0 || features.length % dim != 0) {
      throw new IllegalArgumentException("features length " + features.length + " is not a multiple of dim " + dim);
    }
    this.features = features;
    this.labels = labels;
    this.targets = targets;
    this.dim = dim;
    this.targetDim = targetDim;
    this.rows = features.length / dim;
    if (labels != null && labels.length != rows) {
      throw new IllegalArgumentException(rows + " feature rows but " + labels.length + " labels");
    }
    if (targets != null && targets.length != (long) rows * targetDim) {
      throw new IllegalArgumentException(rows + " feature rows but " + targets.length + " target values");
    }
  }

  @Override
  public int rows() {
    return rows;
  }

  @Override
  public int dim() {
    return dim;
  }

  @Override
  public int targetDim() {
    return targetDim;
  }

  public float[] features() {
    return features;
  }

  public int[] labels() {
    return labels;
  }

  /** A store of the given rows of this one (copies). */
  public HeapRowStore select(int[] idx) {
    float[] f = new float[idx.length * dim];
    int[] l = labels == null ? null : new int[idx.length];
    float[] t = targets == null ? null : new float[idx.length * targetDim];
    gather(idx, 0, idx.length, f, l, t);
    return new HeapRowStore(f, l, t, dim, targetDim);
  }

  @Override
  public void gather(int[] idx, int from, int count, float[] f, int[] l, float[] t) {
    for (int k = 0; k < count; k++) {
      int r = idx[from + k];
      System.arraycopy(features, r * dim, f, k * dim, dim);
      if (labels != null) {
        l[k] = labels[r];
      } else {
        System.arraycopy(targets, r * targetDim, t, k * targetDim, targetDim);
      }
    }
  }
}
