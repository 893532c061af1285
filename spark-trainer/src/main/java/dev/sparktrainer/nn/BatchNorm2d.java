package dev.sparktrainer.nn;

import dev.sparktrainer.comm.Communicator;
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
 * and models with the weights, never touched by the optimizer. Note [batch norm across ranks]: by default, as
 * with PyTorch DDP (without SyncBatchNorm), each rank normalises with its own batch's statistics and updates
 * its own running statistics; the gradients of weight and bias are all-reduced like any other. Rank 0's
 * running statistics are the ones a checkpoint or the trained model keeps (and a resumed job restores on
 * every rank).
 *
 * <p>Note [synchronised batch norm]: with {@code sync} on (ModelSpec: {@code "sync": true}, or {@link
 * ModelSpec#withSyncBatchNorm()}), the layer behaves as torch.nn.SyncBatchNorm under DDP: in training mode
 * the mean and biased variance of each channel are those of the global batch (the N * spatial values of every
 * rank, M in all), y uses them, the running statistics are updated with the global unbiased variance
 * (var * M / (M - 1)), so they stay identical on every rank, and the backward uses the global sums
 * sum_dy and sum_dy_xhat: dx = gamma invStd / M (M dy - sum_dy - xhat sum_dy_xhat). dgamma and dbeta get
 * this rank's own sums (the trainer's all-reduce of the gradient buffer adds the ranks' shares, as DDP does
 * for SyncBatchNorm's weight and bias). Per layer and step that is two all-reduces of 2C floats through
 * {@link Layer.Context#comm()}: forward, [sum x, sum x^2] (Device#batchNormStats, then
 * Device#batchNormFinalizeStats and Device#batchNormApply); backward, [sum dy, sum dy xhat]
 * (Device#batchNormBackwardReduce, then Device#batchNormBackwardApply; skipped when no dL/dx is needed).
 * Both are blocking collectives, issued in layer order, so every rank issues them in the same order. On NCCL
 * they queue on the comm stream behind any gradient bucket already started (as SyncBatchNorm's collectives
 * share the process group's stream in PyTorch), so sync batch norm trades some comm/compute overlap for the
 * global statistics.
 * Assumptions: every rank's batch has the same shape (the trainer's contract), so M = W * N * spatial; the
 * variance is computed in one pass from fp32 sums (accumulated in double on each rank), which loses
 * precision only when a channel's |mean| is far above its standard deviation (relative error of the
 * variance ~ 1e-7 (mean / std)^2). Evaluation mode uses the running statistics, as without sync. Without a
 * communicator or with one rank the same ops run on the local batch (the result equals the per-rank path's
 * to rounding).
 */
public final class BatchNorm2d extends Layer {
  private final float momentum;
  private final float eps;
  private final boolean sync;
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
  private Tensor y; // (N, C, H, W), the last forward's output (relu(bn(x)) when the ReLU is fused)
  private boolean relu; // the ReLU after this layer runs inside it (Note [fused ReLU] in Model)
  private long syncCount; // M of the last synchronised training forward: values per channel over all ranks

  /** Per-rank batch norm (Note [batch norm across ranks]). */
  public BatchNorm2d(float momentum, float eps) {
    this(momentum, eps, false);
  }

  /** {@code sync}: synchronise the batch statistics across ranks (Note [synchronised batch norm]). */
  public BatchNorm2d(float momentum, float eps, boolean sync) {
    if (!(momentum >= 0f && momentum <= 1f)) {
      throw new IllegalArgumentException("batchnorm2d: momentum must be in [0, 1], got " + momentum);
    }
    if (!(eps > 0f) || Float.isInfinite(eps)) {
      throw new IllegalArgumentException("batchnorm2d: eps must be > 0, got " + eps);
    }
    this.momentum = momentum;
    this.eps = eps;
    this.sync = sync;
  }

  public float momentum() {
    return momentum;
  }

  public float eps() {
    return eps;
  }

  /** Computes the ReLU that follows in the same ops (Note [fused ReLU] in Model); not with {@code sync}. */
  void fuseRelu() {
    if (sync) {
      throw new IllegalStateException("batchnorm2d " + name + ": a synchronised batch norm keeps its ReLU apart");
    }
    relu = true;
  }

  /** The output is read back only through a fused ReLU (its mask on the CPU engine). */
  @Override
  boolean backwardReadsOutput() {
    return relu;
  }

  /** Whether training-mode statistics are synchronised across ranks. */
  public boolean sync() {
    return sync;
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
    if (ctx.training() && sync) {
      syncForward(x, y, ctx.comm());
    } else if (ctx.training()) {
      device.batchNormForwardTraining(x, gamma, beta, y, runningMean, runningVar, momentum, eps, saveMean,
          saveInvStd, relu);
    } else {
      device.batchNormForwardInference(x, gamma, beta, runningMean, runningVar, eps, y);
      if (relu) {
        device.relu(y, y);
      }
    }
    this.y = y;
    return y;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (!ctx.training()) {
      throw new IllegalStateException("batchnorm2d " + name + ": backward needs a training-mode forward");
    }
    Tensor g = gradAs("dyCast", dy, x.dtype()); // mixed precision: the op takes one activation dtype
    Tensor dx;
    if (sync) {
      dx = syncBackward(g, ctx.comm(), needInputGrad);
    } else {
      // The op always produces dx; when the caller needs none it is given back at once.
      dx = gradBuffer("dx", x.dtype(), x.shape());
      if (relu) {
        device.batchNormBackwardRelu(x, y, g, gamma, beta, saveMean, saveInvStd, dx, dgamma, dbeta);
      } else {
        device.batchNormBackward(x, g, gamma, saveMean, saveInvStd, dx, dgamma, dbeta);
      }
      if (!needInputGrad) {
        releaseGrad(dx);
        dx = null;
      }
    }
    if (g != dy) {
      releaseGrad(g);
    }
    return dx;
  }

  /** The communicator to synchronise over, or null when there is no other rank. */
  private static Communicator peers(Communicator comm) {
    return comm != null && comm.worldSize() > 1 ? comm : null;
  }

  /** Training forward over the global batch (Note [synchronised batch norm]). */
  private void syncForward(Tensor x, Tensor y, Communicator comm) {
    Communicator peers = peers(comm);
    long count = x.numel() / channels * (peers == null ? 1 : peers.worldSize());
    if (count <= 1) {
      throw new IllegalArgumentException("batchnorm2d " + name + ": training needs more than one value per channel"
          + " over all ranks, got " + x + "; use a larger batch, or evaluation mode");
    }
    // (2C): [sum x, sum x^2]; all-reduced on the comm stream, so never in the step memory plan
    Tensor stats = unplannedBuffer("syncStats", dev.sparktrainer.engine.DType.FLOAT32, new int[] {2 * channels});
    device.batchNormStats(x, stats);
    if (peers != null) {
      peers.allReduceSum(stats);
    }
    device.batchNormFinalizeStats(stats, count, momentum, eps, saveMean, saveInvStd, runningMean, runningVar);
    device.batchNormApply(x, gamma, beta, saveMean, saveInvStd, y);
    syncCount = count;
  }

  /** Backward with the global sums; dgamma and dbeta get this rank's share (Note [synchronised batch norm]). */
  private Tensor syncBackward(Tensor dy, Communicator comm, boolean needInputGrad) {
    Communicator peers = peers(comm);
    long count = x.numel() / channels * (peers == null ? 1 : peers.worldSize());
    if (count != syncCount) {
      throw new IllegalStateException("batchnorm2d " + name + ": backward over " + count + " values per channel,"
          + " but the training forward normalised over " + syncCount + " (another batch or communicator)");
    }
    // (2C): [sum dy, sum dy * xhat]; all-reduced like syncStats
    Tensor sums = unplannedBuffer("syncSums", dev.sparktrainer.engine.DType.FLOAT32, new int[] {2 * channels});
    device.batchNormBackwardReduce(x, dy, saveMean, saveInvStd, sums);
    device.axpy(1f, sums.view(0, channels), dbeta);
    device.axpy(1f, sums.view(channels, channels), dgamma);
    if (!needInputGrad) {
      return null; // every rank skips the same all-reduce: the same layers ask for no dL/dx
    }
    if (peers != null) {
      peers.allReduceSum(sums);
    }
    Tensor dx = gradBuffer("dx", x.dtype(), x.shape());
    device.batchNormBackwardApply(x, dy, gamma, saveMean, saveInvStd, sums, count, dx);
    return dx;
  }
}
