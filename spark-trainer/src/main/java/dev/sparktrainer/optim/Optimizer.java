package dev.sparktrainer.optim;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.GradientSlices;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A fused optimizer over the flat parameter buffer: one device call per step, whatever the number of
 * tensors. Its state (momentum, or AdamW's m and v) lives in flat buffers with the parameters' layout.
 */
public final class Optimizer {
  private final OptimizerConfig config;
  private final Device device;
  private final ParameterSet params;
  private final Map<String, Tensor> state = new LinkedHashMap<>();
  private long steps;

  Optimizer(OptimizerConfig config, Device device, ParameterSet params) {
    this.config = config;
    this.device = device;
    this.params = params;
    int n = Math.toIntExact(params.params().numel());
    if (config.type() == OptimizerConfig.Type.SGD) {
      if (config.momentum() != 0) {
        state.put("momentum", device.allocate(DType.FLOAT32, n));
      }
    } else {
      state.put("m", device.allocate(DType.FLOAT32, n));
      state.put("v", device.allocate(DType.FLOAT32, n));
    }
  }

  public OptimizerConfig config() {
    return config;
  }

  /** Steps taken so far (AdamW's bias-correction t is steps + 1 during the next step). */
  public long steps() {
    return steps;
  }

  /** Restores the step counter (from a checkpoint). */
  public void setSteps(long steps) {
    if (steps < 0) {
      throw new IllegalArgumentException("optimizer steps must be >= 0, got " + steps);
    }
    this.steps = steps;
  }

  /** Named flat state buffers (for checkpoints). */
  public Map<String, Tensor> state() {
    return state;
  }

  /** Applies one update with learning rate {@code lr} using the current gradient buffer. */
  public void step(double lr) {
    // Only the trainable prefix: buffers (batch norm statistics) are not trained (Note [buffers]).
    Tensor p = params.trainableParams();
    Tensor g = params.trainableGrads();
    if (config.type() == OptimizerConfig.Type.SGD) {
      device.sgdStep(p, g, params.prefix(state.get("momentum")), (float) lr, (float) config.momentum(),
          config.nesterov(), (float) config.weightDecay(), steps == 0);
    } else {
      device.adamwStep(p, g, params.prefix(state.get("m")), params.prefix(state.get("v")), (float) lr,
          (float) config.beta1(), (float) config.beta2(), (float) config.eps(), (float) config.weightDecay(),
          steps + 1);
    }
    steps++;
  }

  /**
   * Applies the update of the coming step with learning rate {@code lr} to the given element ranges of the trainable
   * parameters only ({from, to} pairs; Note [sharded optimizer] in train.Trainer: this rank's slices, as their
   * gradients arrive), one device call per range, each the same arithmetic as {@link #step(double)} on those elements;
   * the rest of the parameters and state are left as they are. A step's ranges may take several calls; {@link
   * #endStep()} then counts the step. Range k's gradient is the sum of the slices {@code gradSlices[k]} when
   * gradSlices and it are not null (Device#sgdStep over summed slices: Note [copy-engine collectives] in
   * cuda.NcclCommunicator), else the gradient buffer's.
   */
  public void update(double lr, long[][] ranges, GradientSlices[] gradSlices) {
    Tensor p = params.trainableParams();
    Tensor g = params.trainableGrads();
    if (gradSlices != null && gradSlices.length != ranges.length) {
      throw new IllegalArgumentException(gradSlices.length + " gradient slices for " + ranges.length + " ranges");
    }
    for (long[] r : ranges) {
      if (r.length != 2 || r[0] < 0 || r[1] < r[0] || r[1] > p.numel()) {
        throw new IllegalArgumentException("range " + java.util.Arrays.toString(r) + " is not within the "
            + p.numel() + " trainable elements");
      }
    }
    for (int k = 0; k < ranges.length; k++) {
      long[] r = ranges[k];
      int n = Math.toIntExact(r[1] - r[0]);
      if (n == 0) {
        continue;
      }
      boolean summed = gradSlices != null && gradSlices[k] != null;
      GradientSlices gk = summed ? gradSlices[k] : GradientSlices.of(g.view(r[0], n), 1);
      if (config.type() == OptimizerConfig.Type.SGD) {
        Tensor mom = state.get("momentum");
        device.sgdStep(p.view(r[0], n), gk, mom == null ? null : mom.view(r[0], n), (float) lr,
            (float) config.momentum(), config.nesterov(), (float) config.weightDecay(), steps == 0);
      } else {
        device.adamwStep(p.view(r[0], n), gk, state.get("m").view(r[0], n),
            state.get("v").view(r[0], n), (float) lr, (float) config.beta1(), (float) config.beta2(),
            (float) config.eps(), (float) config.weightDecay(), steps + 1);
      }
    }
  }

  /** Counts a step whose ranges {@link #update} applied. */
  public void endStep() {
    steps++;
  }
}
