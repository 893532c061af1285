package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;

/** (N, d1, d2, ...) -> (N, d1*d2*...): a reshape, no copy. */
public final class Flatten extends Layer {
  private int[] inShape;

  @Override
  public int[] outputShape(int[] inputShape) {
    return new int[] {Math.toIntExact(Shape.numel(inputShape))};
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    inShape = x.shape();
    return x.reshape(x.dim(0), Shape.rowSize(inShape));
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    return needInputGrad ? dy.reshape(inShape) : null;
  }
}
