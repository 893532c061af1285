package dev.sparktrainer.engine;

import java.util.Arrays;

/** Small helpers for int[] shapes. */
public final class Shape {
  private Shape() {}

  /** Number of elements of a shape; rejects negative dimensions and overflow. */
  public static long numel(int... shape) {
    long n = 1;
    for (int d : shape) {
      if (d < 0) {
        throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
      }
      n = Math.multiplyExact(n, (long) d);
    }
    return n;
  }

  /** Product of all dimensions but the first: the per-sample size of a batch tensor. */
  public static int rowSize(int[] shape) {
    long n = 1;
    for (int i = 1; i < shape.length; i++) {
      n *= shape[i];
    }
    return Math.toIntExact(n);
  }

  /** A shape with a batch dimension in front. */
  public static int[] withBatch(int batch, int[] sample) {
    int[] s = new int[sample.length + 1];
    s[0] = batch;
    System.arraycopy(sample, 0, s, 1, sample.length);
    return s;
  }

  /** Human-readable form, e.g. (128, 784). */
  public static String str(int[] shape) {
    StringBuilder b = new StringBuilder("(");
    for (int i = 0; i < shape.length; i++) {
      if (i > 0) {
        b.append(", ");
      }
      b.append(shape[i]);
    }
    return b.append(')').toString();
  }

  /**
   * The shape contract of {@link Device#matmul}: A, B, C 2-D, op(A) (m, k), op(B) (k, n), C (m, n). Returns
   * {m, n, k}; throws IllegalArgumentException naming the shapes otherwise.
   */
  public static int[] checkMatmul(Tensor a, boolean transA, Tensor b, boolean transB, Tensor c) {
    if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2) {
      throw new IllegalArgumentException("matmul needs 2-D tensors, got " + a + ", " + b + ", " + c);
    }
    int m = transA ? a.dim(1) : a.dim(0);
    int k = transA ? a.dim(0) : a.dim(1);
    int kb = transB ? b.dim(1) : b.dim(0);
    int n = transB ? b.dim(0) : b.dim(1);
    if (k != kb || c.dim(0) != m || c.dim(1) != n) {
      throw new IllegalArgumentException("matmul shapes do not agree: op(A)=(" + m + ", " + k + "), op(B)=("
          + kb + ", " + n + "), C=" + str(c.shape()));
    }
    return new int[] {m, n, k};
  }

  /**
   * The argument contract of {@link Device#batchNormFinalizeStats}: more than one value per channel, and the
   * running statistics both given or both null.
   */
  public static void checkBatchNormFinalize(long count, Tensor runningMean, Tensor runningVar, String op) {
    if (count <= 1) {
      throw new IllegalArgumentException(op + ": needs more than one value per channel, got " + count
          + "; use a larger batch, or evaluation mode");
    }
    if ((runningMean == null) != (runningVar == null)) {
      throw new IllegalArgumentException(op + ": runningMean and runningVar must both be given or both be null");
    }
  }

  /** The shape contract of the ops over class scores: logits (N, C) and one label/index per row (N). */
  public static void checkLogits(Tensor logits, Tensor labels, String op) {
    if (logits.rank() != 2 || labels.numel() != logits.dim(0)) {
      throw new IllegalArgumentException(op + ": logits must be (N, C) and labels (N); got " + logits
          + " and " + labels);
    }
  }
}
