package dev.sparktrainer.engine;

/**
 * The geometry of a 2-D pooling window (cuDNN's pooling descriptor): kernel, stride and implicit padding per
 * spatial axis. x (N, C, H, W) -> y (N, C, OH, OW) with OH = (H + 2 padH - kh) / strideH + 1 (floor), as in
 * torch.nn.MaxPool2d / AvgPool2d with ceil_mode=False. Max pooling treats padding as -infinity; average
 * pooling counts padded positions in the divisor (count_include_pad=True, PyTorch's default), so every
 * window divides by kh * kw.
 */
public record Pool2dDesc(int kernelH, int kernelW, int strideH, int strideW, int padH, int padW) {

  /** Checks the values: kernel and stride > 0, 0 <= padding <= kernel / 2 (PyTorch's rule). */
  public Pool2dDesc {
    if (kernelH <= 0 || kernelW <= 0) {
      throw new IllegalArgumentException("kernel must be > 0, got " + kernelH + "x" + kernelW);
    }
    if (strideH <= 0 || strideW <= 0) {
      throw new IllegalArgumentException("stride must be > 0, got " + strideH + "x" + strideW);
    }
    if (padH < 0 || padW < 0 || padH > kernelH / 2 || padW > kernelW / 2) {
      throw new IllegalArgumentException("padding must be between 0 and half the kernel, got " + padH + "x"
          + padW + " for kernel " + kernelH + "x" + kernelW);
    }
  }

  /** Square window, stride and padding. */
  public static Pool2dDesc of(int kernel, int stride, int padding) {
    return new Pool2dDesc(kernel, kernel, stride, stride, padding, padding);
  }

  public int outH(int h) {
    return Math.floorDiv(h + 2 * padH - kernelH, strideH) + 1;
  }

  public int outW(int w) {
    return Math.floorDiv(w + 2 * padW - kernelW, strideW) + 1;
  }

  /** Checks x (N, C, H, W) and y (N, C, OH, OW); throws IllegalArgumentException naming {@code op}. */
  public void check(int[] x, int[] y, String op) {
    boolean ok = x.length == 4 && y.length == 4 && y[0] == x[0] && y[1] == x[1] && y[2] == outH(x[2])
        && y[3] == outW(x[3]) && y[2] > 0 && y[3] > 0;
    if (!ok) {
      throw new IllegalArgumentException(op + ": shapes do not agree with " + this + ": x " + Shape.str(x)
          + ", y " + Shape.str(y));
    }
  }

  @Override
  public String toString() {
    return "pool(kernel " + kernelH + "x" + kernelW + ", stride " + strideH + "x" + strideW + ", padding " + padH
        + "x" + padW + ")";
  }
}
