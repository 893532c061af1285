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

  /** The shape contract of the ops over class scores: logits (N, C) and one label/index per row (N). */
  public static void checkLogits(Tensor logits, Tensor labels, String op) {
    if (logits.rank() != 2 || labels.numel() != logits.dim(0)) {
      throw new IllegalArgumentException(op + ": logits must be (N, C) and labels (N); got " + logits
          + " and " + labels);
    }
  }
}
