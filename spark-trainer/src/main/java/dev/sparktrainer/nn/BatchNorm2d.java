package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.SplittableRandom;

/**
 * Batch normalisation as torch.nn.BatchNorm2d (affine, tracking running statistics): per channel of
 * x (N, C, H, W) (or (N, C)), training mode normalises with the batch's mean and biased variance and updates
 * running_mean / running_var (unbiased) with {@code momentum}; evaluation mode uses the running statistics.
 * weight (C) starts at 1, bias (C) at 0, running_mean at 0, running_var at 1.
 *
 * <p>The running statistics are buffers (see Note [buffers] in {@link ParameterSet}): saved in checkpoints
 * and models with the weights, never touched by the optimizer. Note [batch norm across ranks]: as with
 * PyTorch DDP (without SyncBatchNorm), each rank normalises with its own batch's statistics and updates its
 * own running statistics; the gradients of weight and bias are all-reduced like any other. Rank 0's running
 * statistics are the ones a checkpoint or the trained model keeps (and a resumed job restores on every rank).
 */
public final class BatchNorm2d extends Layer {
  private final float momentum;
  private final float eps;
  private int channels;
  private int gIndex = -1;
  private int bIndex = -1;
  private int mIndex = -1;
  private int vIndex = -1;
  private Tensor gamma; // (C)
  private Tensor beta; // (C)
  private Tensor dgamma; // (C)
  private Tensor dbeta; // (C)
  private Tensor runningMean; // (C), buffer
  private Tensor runningVar; // (C), buffer
  private Tensor saveMean; // (C), batch mean of the last training forward
  private Tensor saveInvStd; // (C), 1 / sqrt(batch var + eps) of the last training forward
  private Tensor x; // (N, C, H, W), saved by forward

  public BatchNorm2d(float momentum, float eps) {
    if (!(momentum >= 0f && momentum <= 1f)) {
      throw new IllegalArgumentException("batchnorm2d: momentum must be in [0, 1], got " + momentum);
    }
    if (!(eps > 0f) || Float.isInfinite(eps)) {
      throw new IllegalArgumentException("batchnorm2d: eps must be > 0, got " + eps);
    }
    this.momentum = momentum;
    this.eps = eps;
  }

  public float momentum() {
    return momentum;
  }

  public float eps() {
    return eps;
  }

  @Override
  public int[] outputShape(int[] in) {
    if (in.length != 3 && in.length != 1) {
      throw new IllegalArgumentException("batchnorm2d expects (channels, height, width) or (channels), got "
          + Shape.str(in));
    }
    return in.clone();
  }

  @Override
  public void declare(String name, int[] inputShape, ParameterSet.Builder builder) {
    super.declare(name, inputShape, builder);
    channels = inputShape[0];
    gIndex = builder.add(name + ".weight", channels);
    bIndex = builder.add(name + ".bias", channels);
    mIndex = builder.addBuffer(name + ".running_mean", channels);
    vIndex = builder.addBuffer(name + ".running_var", channels);
  }

  @Override
  public void bind(Device device, ParameterSet params) {
    super.bind(device, params);
    gamma = params.param(gIndex);
    beta = params.param(bIndex);
    dgamma = params.grad(gIndex);
    dbeta = params.grad(bIndex);
    runningMean = params.param(mIndex);
    runningVar = params.param(vIndex);
    saveMean = buffer("saveMean", new int[] {channels});
    saveInvStd = buffer("saveInvStd", new int[] {channels});
  }

  @Override
  public void initialize(ParameterSet params, float[] host, SplittableRandom rng) {
    Inits.fill(host, params.entries().get(gIndex), 1f);
    Inits.fill(host, params.entries().get(bIndex), 0f);
    Inits.fill(host, params.entries().get(mIndex), 0f);
    Inits.fill(host, params.entries().get(vIndex), 1f);
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    this.x = x;
    Tensor y = buffer("y", x.dtype(), x.shape());
    if (ctx.training()) {
      device.batchNormForwardTraining(x, gamma, beta, y, runningMean, runningVar, momentum, eps, saveMean,
          saveInvStd);
    } else {
      device.batchNormForwardInference(x, gamma, beta, runningMean, runningVar, eps, y);
    }
    return y;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (!ctx.training()) {
      throw new IllegalStateException("batchnorm2d " + name + ": backward needs a training-mode forward");
    }
    // The op always produces dx; when the caller needs none it lands in a scratch buffer.
    dy = as("dyCast", dy, x.dtype()); // mixed precision: the op takes one activation dtype
    Tensor dx = buffer("dx", x.dtype(), x.shape());
    device.batchNormBackward(x, dy, gamma, saveMean, saveInvStd, dx, dgamma, dbeta);
    return needInputGrad ? dx : null;
  }
}
