package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Tensor;

/** Elementwise activations: ReLU and GELU (tanh approximation). No parameters. */
public final class Activation extends Layer {
  /** Which function. */
  public enum Kind { RELU, GELU }

  private final Kind kind;
  private Tensor x;
  private boolean absorbed; // the layer before computes this ReLU (Note [fused ReLU] in Model)

  public Activation(Kind kind) {
    this.kind = kind;
  }

  public Kind kind() {
    return kind;
  }

  /** The layer before applies this ReLU itself: forward and backward pass their tensor through unchanged. */
  void absorbIntoPrevious() {
    if (kind != Kind.RELU) {
      throw new IllegalStateException("only a ReLU can be fused into the layer before it, not " + kind);
    }
    absorbed = true;
  }

  /** Whether the layer before computes this activation (Note [fused ReLU] in Model). */
  public boolean absorbed() {
    return absorbed;
  }

  @Override
  public int[] outputShape(int[] inputShape) {
    return inputShape.clone();
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    if (absorbed) {
      return x;
    }
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
    if (absorbed) {
      return dy;
    }
    Tensor dx = gradBuffer("dx", dy.dtype(), dy.shape());
    if (kind == Kind.RELU) {
      device.reluBackward(x, dy, dx);
    } else {
      device.geluBackward(x, dy, dx);
    }
    return dx;
  }
}
