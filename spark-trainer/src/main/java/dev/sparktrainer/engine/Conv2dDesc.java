package dev.sparktrainer.engine;

/**
 * The geometry of a 2-D convolution (what cuDNN calls a convolution descriptor): stride, zero padding and
 * dilation per spatial axis, and the number of groups. Tensors are channels-first: x (N, C, H, W), the
 * filter w (K, C / groups, kh, kw), y (N, K, OH, OW) with OH = (H + 2 padH - dilationH (kh - 1) - 1) / strideH
 * + 1 (floor), as in torch.nn.Conv2d.
 */
public record Conv2dDesc(int strideH, int strideW, int padH, int padW, int dilationH, int dilationW,
    int groups) {

  /** Checks the values: strides, dilations and groups > 0, padding >= 0. */
  public Conv2dDesc {
    if (strideH <= 0 || strideW <= 0) {
      throw new IllegalArgumentException("conv2d: stride must be > 0, got " + strideH + "x" + strideW);
    }
    if (padH < 0 || padW < 0) {
      throw new IllegalArgumentException("conv2d: padding must be >= 0, got " + padH + "x" + padW);
    }
    if (dilationH <= 0 || dilationW <= 0) {
      throw new IllegalArgumentException("conv2d: dilation must be > 0, got " + dilationH + "x" + dilationW);
    }
    if (groups <= 0) {
      throw new IllegalArgumentException("conv2d: groups must be > 0, got " + groups);
    }
  }

  /** Square stride/padding, dilation 1, one group. */
  public static Conv2dDesc of(int stride, int padding) {
    return new Conv2dDesc(stride, stride, padding, padding, 1, 1, 1);
  }

  /** Output height for input height {@code h} and kernel height {@code kh} (may be <= 0: does not fit). */
  public int outH(int h, int kh) {
    return Math.floorDiv(h + 2 * padH - dilationH * (kh - 1) - 1, strideH) + 1;
  }

  /** Output width for input width {@code w} and kernel width {@code kw}. */
  public int outW(int w, int kw) {
    return Math.floorDiv(w + 2 * padW - dilationW * (kw - 1) - 1, strideW) + 1;
  }

  /**
   * Checks that x (N, C, H, W), w (K, C / groups, kh, kw) and y (N, K, OH, OW) agree with this geometry;
   * throws IllegalArgumentException naming {@code op} and the shapes otherwise.
   */
  public void check(int[] x, int[] w, int[] y, String op) {
    boolean ok = x.length == 4 && w.length == 4 && y.length == 4 && w[1] * groups == x[1] && w[0] % groups == 0
        && y[0] == x[0] && y[1] == w[0] && y[2] == outH(x[2], w[2]) && y[3] == outW(x[3], w[3]) && y[2] > 0
        && y[3] > 0;
    if (!ok) {
      throw new IllegalArgumentException(op + ": shapes do not agree with " + this + ": x " + Shape.str(x)
          + ", w " + Shape.str(w) + ", y " + Shape.str(y) + " (expected x (N, C, H, W), w (K, C/groups, kh, kw),"
          + " y (N, K, OH, OW))");
    }
  }

  @Override
  public String toString() {
    return "conv(stride " + strideH + "x" + strideW + ", padding " + padH + "x" + padW + ", dilation "
        + dilationH + "x" + dilationW + ", groups " + groups + ")";
  }
}
