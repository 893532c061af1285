package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;

/**
 * (N, d1, d2, ...) -> (N, d1*d2*...): a reshape, no copy, except for a channels-last input with H * W > 1
 * (Tensor#channelsLast), which is first converted to row-major order, so the features come out in the order
 * of the CPU engine and PyTorch (c, h, w); the gradient goes back converted to the input's layout.
 */
public final class Flatten extends Layer {
  private int[] inShape;
  private boolean convert; // the last forward converted a channels-last input

  @Override
  public int[] outputShape(int[] inputShape) {
    return new int[] {Math.toIntExact(Shape.numel(inputShape))};
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    inShape = x.shape();
    convert = x.channelsLast() && x.rank() == 4 && (long) x.dim(2) * x.dim(3) > 1;
    if (convert) {
      Tensor rowMajor = buffer("y", x.dtype(), inShape);
      device.convertLayout(x, rowMajor, false, false);
      x = rowMajor;
    }
    return x.reshape(x.dim(0), Shape.rowSize(inShape));
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (!needInputGrad) {
      return null;
    }
    if (convert) {
      Tensor dx = gradBuffer("dx", dy.dtype(), inShape);
      device.convertLayout(dy.reshape(inShape), dx, true, false);
      return dx;
    }
    return dy.reshape(inShape);
  }
}
