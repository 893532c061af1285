package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;

/** Training losses, each fused with its backward. */
public enum Loss {
  /** Softmax cross-entropy over class-index labels (INT32). */
  CROSS_ENTROPY,
  /** Mean squared error against float targets with the output's shape. */
  MSE;

  /**
   * Per-sample losses into {@code losses} (N) and, when dOut is not null, dL/dOut scaled by gradScale
   * (1 / global batch size for a mean loss).
   */
  public void compute(Device d, Tensor out, Tensor target, Tensor losses, Tensor dOut, float gradScale) {
    if (this == CROSS_ENTROPY) {
      d.softmaxCrossEntropy(out, target, losses, dOut, gradScale);
    } else {
      d.mse(out, target, losses, dOut, gradScale);
    }
  }

  /** Parses "cross_entropy" or "mse". */
  public static Loss parse(String s) {
    return switch (s.toLowerCase(java.util.Locale.ROOT)) {
      case "cross_entropy", "crossentropy", "ce" -> CROSS_ENTROPY;
      case "mse" -> MSE;
      default -> throw new IllegalArgumentException("unknown loss '" + s + "' (use cross_entropy or mse)");
    };
  }
}
