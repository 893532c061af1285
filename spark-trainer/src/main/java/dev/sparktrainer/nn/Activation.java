package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Tensor;

/** Elementwise activations: ReLU and GELU (tanh approximation). No parameters. */
public final class Activation extends Layer {
  /** Which function. */
  public enum Kind { RELU, GELU }

  private final Kind kind;
  private Tensor x;

  public Activation(Kind kind) {
    this.kind = kind;
  }

  public Kind kind() {
    return kind;
  }

  @Override
  public int[] outputShape(int[] inputShape) {
    return inputShape.clone();
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    this.x = x;
    Tensor y = buffer("y", x.dtype(), x.shape());
    if (kind == Kind.RELU) {
      device.relu(x, y);
    } else {
      device.gelu(x, y);
    }
    return y;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (!needInputGrad) {
      return null;
    }
    Tensor dx = buffer("dx", dy.dtype(), dy.shape());
    if (kind == Kind.RELU) {
      device.reluBackward(x, dy, dx);
    } else {
      device.geluBackward(x, dy, dx);
    }
    return dx;
  }
}
