package dev.sparktrainer.data;

/**
 * A rank's training rows in local order: features (dim floats per row) and a label per row (a class index,
 * or targetDim floats for regression). Implementations: {@link HeapRowStore} (Java arrays) and the Arrow
 * store of the Spark path.
 */
public interface RowStore extends AutoCloseable {
  int rows();

  /** Features per row. */
  int dim();

  /** Floats per target for regression, or 0 when labels are class indices. */
  int targetDim();

  /**
   * Copies rows idx[from..from+count) into dst arrays: features row-major (count x dim) and labels (count)
   * or targets (count x targetDim). Called from several threads at once, each with its own dst arrays (Note
   * [loader threads] in BatchLoader).
   */
  void gather(int[] idx, int from, int count, float[] features, int[] labels, float[] targets);

  @Override
  default void close() {}
}
