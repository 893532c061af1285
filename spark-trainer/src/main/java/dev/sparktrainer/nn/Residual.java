package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

/**
 * A residual block: y = main(x) + shortcut(x), where the shortcut is the identity when it has no layers
 * (torchvision's BasicBlock / Bottleneck without the final ReLU, which follows as its own layer; a
 * downsampling shortcut is e.g. conv2d 1x1 with stride + batchnorm2d). Both paths must give the same shape.
 * Children are named {@code <name>.main.<k>.<type>} and {@code <name>.shortcut.<k>.<type>}.
 *
 * <p>Backward: dy goes into both paths unchanged and dL/dx is the sum of what they return.
 */
public final class Residual extends Layer {
  private final Sequential main;
  private final Sequential shortcut; // null: identity
  private boolean relu; // the ReLU after the block runs inside its add (Note [fused ReLU] in Model)
  private Tensor y; // the last forward's output

  /** @param shortcut the shortcut's layers; empty for the identity */
  public Residual(List<Layer> main, List<Layer> shortcut) {
    if (main.isEmpty()) {
      throw new IllegalArgumentException("residual: 'layers' (the main path) is empty; add at least one layer");
    }
    this.main = new Sequential(main);
    this.shortcut = shortcut.isEmpty() ? null : new Sequential(shortcut);
  }

  public Sequential main() {
    return main;
  }

  /** Computes the ReLU that follows the block in its add (Note [fused ReLU] in Model). */
  void fuseRelu() {
    relu = true;
  }

  /** The shortcut path, or null for the identity. */
  public Sequential shortcut() {
    return shortcut;
  }

  @Override
  public int[] outputShape(int[] in) {
    int[] m = path(main, in, "main path");
    int[] s = shortcut == null ? in : path(shortcut, in, "shortcut");
    if (!Arrays.equals(m, s)) {
      throw new IllegalArgumentException("residual: the main path gives " + Shape.str(m) + " but the "
          + (shortcut == null ? "identity shortcut" : "shortcut") + " gives " + Shape.str(s)
          + "; the shapes must match (add a shortcut, e.g. conv2d 1x1 with the main path's stride and filters)");
    }
    return m;
  }

  private static int[] path(Sequential seq, int[] in, String what) {
    int[] s = in;
    List<Layer> layers = seq.layers();
    for (int k = 0; k < layers.size(); k++) {
      try {
        s = layers.get(k).outputShape(s);
      } catch (IllegalArgumentException e) {
        throw new IllegalArgumentException(what + " layer " + k + ": " + e.getMessage(), e);
      }
    }
    return s;
  }

  @Override
  public void declare(String name, int[] inputShape, ParameterSet.Builder builder) {
    super.declare(name, inputShape, builder);
    main.declare(name + ".main", inputShape, builder);
    if (shortcut != null) {
      shortcut.declare(name + ".shortcut", inputShape, builder);
    }
  }

  @Override
  public void bind(Device device, ParameterSet params) {
    super.bind(device, params);
    main.bind(device, params);
    if (shortcut != null) {
      shortcut.bind(device, params);
    }
  }

  @Override
  public void initialize(ParameterSet params, float[] host, SplittableRandom rng) {
    main.initialize(params, host, rng);
    if (shortcut != null) {
      shortcut.initialize(params, host, rng);
    }
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    Tensor m = main.forward(x, ctx);
    Tensor s = shortcut == null ? x : shortcut.forward(x, ctx);
    // Note [in-place residual add]: when the main path's last layer (in ResNets its last batch norm) never reads
    // its output back, y is written over that output, as PyTorch's `out += identity` (saves one activation per
    // block: ~2.8 GB for ResNet-50 at batch 256 in bf16). Otherwise y gets its own buffer. (Buffers of the step
    // memory plan are regions with storages of their own, so the tests below see them as separate allocations:
    // Note [step memory plan] in StepMemoryPlan.)
    List<Layer> ml = main.layers();
    boolean inPlace = !ml.get(ml.size() - 1).backwardReadsOutput() && !GradientPool.sameStorage(m, s)
        && !GradientPool.sameStorage(m, x);
    Tensor y = inPlace ? m : buffer("y", m.dtype(), m.shape());
    device.add(m, s, y, relu);
    this.y = y;
    List<Layer> sl = shortcut == null ? List.of() : shortcut.layers();
    StepMemoryPlan plan = plan();
    if (plan != null && !sl.isEmpty() && !sl.get(sl.size() - 1).backwardReadsOutput()
        && !GradientPool.sameStorage(s, x) && !GradientPool.sameStorage(s, y)) {
      plan.deadAfterForward(s); // read by the add alone (Note [step memory plan])
    }
    return y;
  }

  @Override
  void attachPool(GradientPool pool) {
    super.attachPool(pool);
    main.attachPool(pool);
    if (shortcut != null) {
      shortcut.attachPool(pool);
    }
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    Tensor g = dy; // dL/d(main + shortcut): dy, or dy masked by the fused ReLU
    if (relu) {
      g = gradBuffer("dyRelu", dy.dtype(), dy.shape());
      device.reluBackward(y, dy, g);
    }
    Tensor dm = main.runBackward(g, ctx, needInputGrad);
    Tensor ds = shortcut == null ? g : shortcut.runBackward(g, ctx, needInputGrad);
    Tensor dx = null;
    if (needInputGrad) {
      dx = gradBuffer("dx", dm.dtype(), dm.shape());
      device.add(dm, ds, dx);
    }
    // Note [transient gradient buffers]: give back what the paths returned (unless it is g itself), then g.
    for (Tensor t : new Tensor[] {dm, ds}) {
      if (!GradientPool.sameStorage(t, g)) {
        releaseGrad(t);
      }
    }
    if (g != dy) {
      releaseGrad(g);
    }
    return dx;
  }
}
