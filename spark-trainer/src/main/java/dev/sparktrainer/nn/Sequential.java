package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import java.util.List;
import java.util.SplittableRandom;

/** Layers applied in order; backward runs them in reverse. Children are named "index.type". */
public final class Sequential extends Layer {
  private final List<Layer> layers;

  public Sequential(List<Layer> layers) {
    this.layers = List.copyOf(layers);
  }

  public List<Layer> layers() {
    return layers;
  }

  @Override
  public int[] outputShape(int[] inputShape) {
    int[] s = inputShape;
    for (Layer l : layers) {
      s = l.outputShape(s);
    }
    return s;
  }

  @Override
  public void declare(String name, int[] inputShape, ParameterSet.Builder builder) {
    super.declare(name, inputShape, builder);
    int[] s = inputShape;
    for (int k = 0; k < layers.size(); k++) {
      Layer l = layers.get(k);
      String child = (name.isEmpty() ? "" : name + ".") + k + "."
          + l.getClass().getSimpleName().toLowerCase(java.util.Locale.ROOT);
      l.declare(child, s, builder);
      s = l.outputShape(s);
    }
  }

  @Override
  public void bind(Device device, ParameterSet params) {
    super.bind(device, params);
    for (Layer l : layers) {
      l.bind(device, params);
    }
  }

  @Override
  public void initialize(ParameterSet params, float[] host, SplittableRandom rng) {
    for (Layer l : layers) {
      l.initialize(params, host, rng);
    }
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    for (Layer l : layers) {
      x = l.forward(x, ctx);
    }
    return x;
  }

  @Override
  void attachPool(GradientPool pool) {
    super.attachPool(pool);
    for (Layer l : layers) {
      l.attachPool(pool);
    }
  }

  /** The gradients between the layers go back to the pool once used (Note [transient gradient buffers]). */
  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    Tensor incoming = dy;
    for (int k = layers.size() - 1; k >= 0; k--) {
      Tensor next = layers.get(k).runBackward(dy, ctx, needInputGrad || k > 0);
      if (dy != incoming && !GradientPool.sameStorage(next, dy)) {
        releaseGrad(dy);
      }
      dy = next;
    }
    return dy;
  }
}
