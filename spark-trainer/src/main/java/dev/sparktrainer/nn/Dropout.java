package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Rng;
import dev.sparktrainer.engine.Tensor;

/**
 * Inverted dropout. The mask is not stored: it is a counter-based hash of (seed, step, layer, index), so
 * backward regenerates it, and a resumed run draws the same masks.
 */
public final class Dropout extends Layer {
  private final float p;
  private int layerIndex;

  public Dropout(float p) {
    if (!(p >= 0f && p < 1f)) {
      throw new IllegalArgumentException("dropout: p must be in [0, 1), got " + p);
    }
    this.p = p;
  }

  public float p() {
    return p;
  }

  @Override
  public int[] outputShape(int[] inputShape) {
    return inputShape.clone();
  }

  @Override
  public void declare(String name, int[] inputShape, dev.sparktrainer.engine.ParameterSet.Builder builder) {
    super.declare(name, inputShape, builder);
    this.layerIndex = name.hashCode();
  }

  private long seed(Context ctx) {
    return Rng.derive(Rng.derive(ctx.seed(), ctx.step()), layerIndex);
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    if (!ctx.training() || p == 0f) {
      return x;
    }
    Tensor y = buffer("y", x.dtype(), x.shape());
    device.dropout(x, y, p, seed(ctx), 0);
    return y;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (!needInputGrad) {
      return null;
    }
    if (!ctx.training() || p == 0f) {
      return dy;
    }
    Tensor dx = gradBuffer("dx", dy.dtype(), dy.shape());
    device.dropoutBackward(dy, dx, p, seed(ctx), 0);
    return dx;
  }
}
