package dev.sparktrainer.engine;

import java.nio.ByteBuffer;

/**
 * A compute device and the op set that both backends ({@code cpu}, {@code cuda}) implement.
 *
 * <p>Conventions: matrices are row-major; batch tensors are (N, features...). Ops never allocate in the
 * step: callers pass output tensors. Ops that "accumulate" add into their output ({@code +=}), which is how
 * gradients of shared buffers and micro-batch accumulation work. Ops are queued in order on the device's
 * compute stream; the ones that return a host value ({@link #sum}, {@link #sumSquares}, {@link #download})
 * wait for the work before them.
 *
 * <p>Random numbers (dropout) come from a counter-based hash of (seed, index), so every backend draws the
 * same mask for the same seed and offset; see {@link Rng}.
 */
public interface Device extends AutoCloseable {

  /** Short name for logs, e.g. "cpu" or "cuda:0". */
  String name();

  /** A new zero-filled tensor owned by this device (freed when the device closes, or by {@link #free}). */
  Tensor allocate(DType dtype, int... shape);

  /**
   * Frees {@code t} now, before the device closes: it must be a tensor that {@link #allocate} returned, not a
   * view or a {@link Tensor#region} of one (IllegalArgumentException). Work already queued that uses it finishes
   * first; neither {@code t} nor any view of it may be used afterwards (the CUDA engine throws on such a use, the
   * CPU engine just drops its reference). Not allowed while a CUDA graph is captured (Note [CUDA graphs] in
   * train.Trainer). Freeing a tensor twice does nothing. Used by the step memory plan to give back the buffers of
   * the step it recorded (Note [step memory plan] in nn.StepMemoryPlan).
   */
  void free(Tensor t);

  // ---- host transfers ----

  /** dst[i] = src[srcOffset + i] for i in [0, dst.numel). dst must be FLOAT32. */
  void upload(float[] src, int srcOffset, Tensor dst);

  /** dst[i] = src[srcOffset + i]. dst must be INT32. */
  void upload(int[] src, int srcOffset, Tensor dst);

  /**
   * Copies dst.numel() little-endian elements of dst's dtype from {@code src} (from its position; the
   * position is not moved). Used for Arrow buffers and checkpoints.
   */
  void upload(ByteBuffer src, Tensor dst);

  /** dst[dstOffset + i] = src[i]. src must be FLOAT32 (or BFLOAT16, converted). */
  void download(Tensor src, float[] dst, int dstOffset);

  /** dst[dstOffset + i] = src[i]. src must be INT32. */
  void download(Tensor src, int[] dst, int dstOffset);

  // ---- elementwise and BLAS-1 ----

  /** x[i] = value. */
  void fill(Tensor x, float value);

  /** dst[i] = src[i]; same element count; FLOAT32 and BFLOAT16 convert into each other (round to nearest even). */
  void copy(Tensor src, Tensor dst);

  /** y[i] += alpha * x[i]. */
  void axpy(float alpha, Tensor x, Tensor y);

  /** y[i] = a[i] + b[i] (same element count; y may be a or b). Default: copy then axpy. */
  default void add(Tensor a, Tensor b, Tensor y) {
    if (y == b) {
      axpy(1f, a, y);
      return;
    }
    if (y != a) {
      copy(a, y);
    }
    axpy(1f, b, y);
  }

  /**
   * y[i] = a[i] + b[i], then max(y[i], 0) when {@code relu} (a residual block and the ReLU after it, in one pass
   * where the backend fuses them). Default: {@link #add(Tensor, Tensor, Tensor)} then {@link #relu}.
   */
  default void add(Tensor a, Tensor b, Tensor y, boolean relu) {
    add(a, b, y);
    if (relu) {
      relu(y, y);
    }
  }

  /** x[i] *= alpha. */
  void scale(Tensor x, float alpha);

  /** Sum of all elements, in double (waits for the device). */
  double sum(Tensor x);

  /** Sum of squares of all elements, in double (waits for the device). */
  double sumSquares(Tensor x);

  /** accum[0] += sum(x), on the device (no wait). */
  void sumInto(Tensor x, Tensor accum);

  // ---- matrix multiply ----

  /**
   * C = alpha * op(A) * op(B) + beta * C, row-major 2-D tensors, op = transpose when the flag is set.
   * Shapes are checked: op(A) is (m, k), op(B) is (k, n), C is (m, n).
   */
  void matmul(Tensor a, boolean transA, Tensor b, boolean transB, Tensor c, float alpha, float beta);

  /** y(N, C) += bias(C) broadcast over rows. */
  void addBias(Tensor y, Tensor bias);

  /** dbias(C) += sum over rows of dy(N, C). */
  void biasGrad(Tensor dy, Tensor dbias);

  // ---- activations ----

  /** y = max(x, 0). */
  void relu(Tensor x, Tensor y);

  /** dx = dy * (x > 0). */
  void reluBackward(Tensor x, Tensor dy, Tensor dx);

  /** y = GELU(x), tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
  void gelu(Tensor x, Tensor y);

  /** dx = dy * GELU'(x) (tanh approximation). */
  void geluBackward(Tensor x, Tensor dy, Tensor dx);

  /**
   * Inverted dropout: y[i] = x[i] * keep(i) / (1 - p) where keep(i) = Rng.uniform(seed, offset + i) >= p.
   */
  void dropout(Tensor x, Tensor y, float p, long seed, long offset);

  /** dx = dy * keep(i) / (1 - p), the same mask as {@link #dropout} for the same seed and offset. */
  default void dropoutBackward(Tensor dy, Tensor dx, float p, long seed, long offset) {
    dropout(dy, dx, p, seed, offset); // the same scaled mask, applied to the gradient
  }

  // ---- losses ----

  /**
   * Softmax cross-entropy with class-index labels, fused with its backward. logits (N, C), labels INT32 (N).
   * losses[n] = -log softmax(logits[n])[labels[n]]; when dlogits is not null,
   * dlogits[n] = (softmax(logits[n]) - onehot(labels[n])) * gradScale. Labels outside [0, C) throw (CPU) or
   * produce NaN losses (GPU).
   */
  void softmaxCrossEntropy(Tensor logits, Tensor labels, Tensor losses, Tensor dlogits, float gradScale);

  /**
   * Mean squared error per sample: losses[n] = mean_j (pred[n,j] - target[n,j])^2; when dpred is not null,
   * dpred = 2 (pred - target) / C * gradScale.
   */
  void mse(Tensor pred, Tensor target, Tensor losses, Tensor dpred, float gradScale);

  /** correct[0] += number of rows n with argmax(logits[n]) == labels[n] (first maximum wins). */
  void countCorrect(Tensor logits, Tensor labels, Tensor correct);

  /** out[n] = argmax(logits[n]) (first maximum wins). out is INT32 (N). */
  void argmax(Tensor logits, Tensor out);

  /** probs[n] = softmax(logits[n]). */
  void softmax(Tensor logits, Tensor probs);

  // ---- fused optimizers over flat buffers ----

  /**
   * SGD as in torch.optim.SGD (dampening 0): g = grad + wd * p; buf = momentum * buf + g (buf = g at the
   * first step); g = nesterov ? g + momentum * buf : buf; p -= lr * g. With momentum 0, buf is unused and
   * may be null.
   */
  void sgdStep(Tensor params, Tensor grads, Tensor momentumBuf, float lr, float momentum, boolean nesterov,
      float weightDecay, boolean firstStep);

  /**
   * AdamW as in torch.optim.AdamW: p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
   * p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), t = step (1-based).
   */
  void adamwStep(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2,
      float eps, float weightDecay, long step);

  /**
   * {@link #sgdStep} whose gradient is the sum of the given slices, as {@link #sumSlices(GradientSlices, Tensor)}
   * would write it (Note [summed gradient slices] in native/kernels/optim.cuh). The default sums into a temporary
   * tensor first; the CUDA engine reads the slices in the update's pass.
   */
  default void sgdStep(Tensor params, GradientSlices grads, Tensor momentumBuf, float lr, float momentum,
      boolean nesterov, float weightDecay, boolean firstStep) {
    withSummed(params, grads, g -> sgdStep(params, g, momentumBuf, lr, momentum, nesterov, weightDecay,
        firstStep));
  }

  /** {@link #adamwStep} over summed gradient slices, as {@link #sgdStep(Tensor, GradientSlices, Tensor, float, float, boolean, float, boolean)}. */
  default void adamwStep(Tensor params, GradientSlices grads, Tensor m, Tensor v, float lr, float beta1,
      float beta2, float eps, float weightDecay, long step) {
    withSummed(params, grads, g -> adamwStep(params, g, m, v, lr, beta1, beta2, eps, weightDecay, step));
  }

  /** Runs step on the gradient: the one slice itself (ways 1), else the slices' sum in a temporary tensor. */
  private void withSummed(Tensor params, GradientSlices grads, java.util.function.Consumer<Tensor> step) {
    if (grads.ways() == 1) {
      step.accept(grads.slice(0));
      return;
    }
    Tensor g = allocate(grads.slices().dtype(), Math.toIntExact(params.numel()));
    try {
      sumSlices(grads, g);
      step.accept(g);
    } finally {
      free(g);
    }
  }

  /**
   * Allocates as {@link #allocate}, in memory a communicator may register for collectives without SMs where the
   * device can (Note [copy-engine collectives] in cuda.NcclCommunicator; CudaDevice#preferRegistrableMemory). The
   * default: {@link #allocate}.
   */
  default Tensor allocateRegistrable(DType dtype, int... shape) {
    return allocate(dtype, shape);
  }

  /**
   * dst = the sum of src's slices, each of dst's size and dtype (Note [summed gradient slices] in
   * native/kernels/optim.cuh): added in fp32 in the order j = 0, 1, ..., rounded once to dst's dtype (an all-to-all's
   * chunks summed: Note [sharded optimizer] in train.Trainer). For two slices that is the bits of NCCL's two-rank sum.
   */
  default void sumSlices(GradientSlices src, Tensor dst) {
    throw new UnsupportedOperationException(getClass().getSimpleName() + " has no sumSlices");
  }

  /** {@link #sumSlices(GradientSlices, Tensor)} of the {@code ways} slices of src, all read from src. */
  default void sumSlices(Tensor src, int ways, Tensor dst) {
    sumSlices(GradientSlices.of(src, ways), dst);
  }

  // ---- fused and asynchronous ops (performance). The defaults compose the ops above, so a backend that
  // ---- does not override them (the CPU engine) computes exactly what the composed calls compute.

  /**
   * Whether layers should take the fused mixed-precision path on this device (bf16 activations, {@link
   * #linearForward} with epilogues, {@link #linearActBackward}, a bf16 mirror of the parameters). False by
   * default: the CPU engine keeps the composed op-by-op path and its results.
   */
  default boolean prefersFusedLinear() {
    return false;
  }

  /**
   * y = act(x W^T + bias), act = ReLU when {@code relu}, else identity: x (N, in), w (out, in), bias (out) or
   * null, y (N, out). On the GPU one cuBLASLt call with a bias/ReLU epilogue (the bias then has y's dtype).
   */
  default void linearForward(Tensor x, Tensor w, Tensor bias, boolean relu, Tensor y) {
    matmul(x, false, w, true, y, 1f, 0f);
    if (bias != null) {
      addBias(y, bias);
    }
    if (relu) {
      relu(y, y);
    }
  }

  /**
   * The backward of an activation and a bias in one pass: dz = dh * (h > 0) when h (the ReLU's output, or
   * its input) is given, else dz = dh (a cast when the dtypes differ); when dbias is not null, dbias = (accumulate
   * ? dbias : 0) + column sums of dz over the N rows. dz may be dh (in place). All (N, C) except dbias (C).
   * The GPU sums before rounding to dz's dtype, in a fixed order (deterministic).
   */
  default void linearActBackward(Tensor dh, Tensor h, Tensor dz, Tensor dbias, boolean accumulate) {
    if (h != null) {
      reluBackward(h, dh, dz);
    } else if (dh != dz) {
      copy(dh, dz);
    }
    if (dbias != null) {
      if (!accumulate) {
        fill(dbias, 0f);
      }
      biasGrad(h != null ? dz : dh, dbias);
    }
  }

  /**
   * y = GELU(x W^T + bias) (tanh approximation), keeping GELU's input pre = x W^T + bias for {@link
   * #linearGeluBackward}: x (N, in), w (out, in), bias (out) or null, pre and y (N, out) of one dtype (Note [fused
   * GELU] in nn.Linear). On the GPU one cuBLASLt call with a GELU epilogue where it has one. Default: linearForward
   * into pre, then gelu.
   */
  default void linearForwardGelu(Tensor x, Tensor w, Tensor bias, Tensor pre, Tensor y) {
    linearForward(x, w, bias, false, pre);
    gelu(pre, y);
  }

  /**
   * {@link #linearActBackward} for a GELU: dz = dh * GELU'(pre), pre being GELU's input ({@link
   * #linearForwardGelu}), and when dbias is not null dbias = (accumulate ? dbias : 0) + column sums of dz. dz may
   * be dh (in place). On the GPU one pass, the sums taken before rounding to dz's dtype, in a fixed order.
   */
  default void linearGeluBackward(Tensor dh, Tensor pre, Tensor dz, Tensor dbias, boolean accumulate) {
    geluBackward(pre, dh, dz);
    if (dbias != null) {
      if (!accumulate) {
        fill(dbias, 0f);
      }
      biasGrad(dz, dbias);
    }
  }

  /**
   * Declares that {@code mirror} (BFLOAT16, same element count) holds the low-precision copy of {@code src}
   * (the flat parameter buffer). A device may then write the mirror in the same pass as the fused optimizer
   * steps over src. Default: nothing.
   */
  default void registerMirror(Tensor src, Tensor mirror) {}

  /**
   * Declares the registered {@code mirror} current although {@code src} was written since: the caller made every
   * element of the mirror the rounding of the parameters' latest values by other means (Note [sharded optimizer] in
   * train.Trainer: each rank's optimizer writes the mirror of its slices, an all-gather brings the others', and the
   * fp32 values of the other ranks' slices are stale until they are gathered). The next {@link #refreshMirror} then
   * copies nothing. Default: nothing (a device without registered mirrors copies on every refresh).
   */
  default void markMirrorCurrent(Tensor src, Tensor mirror) {}

  /**
   * Whether this device tracks the registered mirror: its fused optimizer steps write the mirror of the parameters
   * (or of a slice of them) in the same pass, and {@link #markMirrorCurrent} makes the next {@link #refreshMirror}
   * skip its copy. Default false: every refresh copies the parameters.
   */
  default boolean tracksMirror() {
    return false;
  }

  /**
   * Makes {@code mirror} equal to src rounded to its dtype. A device that tracks writes may skip the copy
   * when the mirror is known to be current. Default: copy.
   */
  default void refreshMirror(Tensor src, Tensor mirror) {
    copy(src, mirror);
  }

  /**
   * Like {@link #upload(float[], int, Tensor)}, but the copy may run on a copy stream: it is ordered after
   * all work queued so far (which may still read dst) and before the work queued after the next {@link
   * #awaitPrefetch()}. The host data is consumed before the call returns. Default: upload.
   */
  default void prefetch(float[] src, int srcOffset, Tensor dst) {
    upload(src, srcOffset, dst);
  }

  /**
   * {@link #prefetch(float[], int, Tensor)} of values already rounded to bf16 on the host ({@link Bf16#bits}), into
   * a BFLOAT16 tensor: the same bytes as prefetching the floats they were rounded from, without rounding on the
   * calling thread (Note [bf16 input on the loader threads] in data.BatchLoader). Default: the exact floats, through
   * prefetch(float[]).
   */
  default void prefetchBf16(short[] src, int srcOffset, Tensor dst) {
    if (dst.dtype() != DType.BFLOAT16) {
      throw new IllegalArgumentException("prefetchBf16 needs a BFLOAT16 tensor, got " + dst);
    }
    int n = Math.toIntExact(dst.numel());
    if (srcOffset < 0 || srcOffset + (long) n > src.length) {
      throw new IndexOutOfBoundsException("prefetchBf16 of " + n + " values from offset " + srcOffset
          + " of an array of " + src.length);
    }
    float[] f = new float[n];
    for (int i = 0; i < n; i++) {
      f[i] = Bf16.value(src[srcOffset + i]);
    }
    prefetch(f, 0, dst);
  }

  /** {@link #prefetch(float[], int, Tensor)} for INT32 tensors. */
  default void prefetch(int[] src, int srcOffset, Tensor dst) {
    upload(src, srcOffset, dst);
  }

  /** Orders the work queued from now on after every {@link #prefetch} queued so far. Default: nothing. */
  default void awaitPrefetch() {}

  /**
   * Makes the prefetches queued from now until the next {@link #awaitPrefetch()} wait only for the compute work queued
   * before this call, not for the work queued after it: the caller promises that work does not touch their
   * destinations (Note [staging after the launch] in train.Trainer). Default: nothing (prefetch copies at once).
   */
  default void markPrefetchOrder() {}

  /**
   * Runs {@code work} once and, where the device can, records the device work it queues so that {@link
   * StepGraph#replay()} queues the same ops again, on the same memory with the same arguments, without running
   * {@code work}'s host code (a CUDA graph; Note [CUDA graphs] in train.Trainer). The work must be static: only
   * ops of this device queued in order, no allocation, no host transfer, nothing that waits for the device or
   * returns a device value to the host, and no argument that must differ on a later replay. Returns the graph
   * (the work has run once, from it), or null when the device records nothing: the default (the CPU engine),
   * which just runs the work.
   *
   * @throws GraphCaptureException when recording failed: nothing of the work ran on the device and the device
   *     is usable, but the work's host code may have stopped midway; the caller restores its host state and
   *     runs the work without recording
   */
  default StepGraph captureGraph(Runnable work) {
    work.run();
    return null;
  }

  /**
   * Leaves {@code sms} of the device's streaming multiprocessors to other streams in the matrix multiplies queued
   * from now on (0: none, the default): the GPU trainer sets it around a backward whose gradient all-reduce
   * overlaps it, so that the communication kernels find SMs free (Note [GEMM SM carve-out] in CudaDevice). A
   * device without SMs (the CPU engine) has nothing to leave: the default does nothing.
   *
   * @throws IllegalArgumentException when {@code sms} is negative or not below the device's SM count
   */
  default void gemmSmCarveout(int sms) {
    if (sms < 0) {
      throw new IllegalArgumentException("gemmSmCarveout must be >= 0 SMs, got " + sms);
    }
  }

  /**
   * The carve-out ({@link #gemmSmCarveout}) the trainer uses by default while an all-reduce between GPUs of one
   * host overlaps backward: 0 here (nothing to leave), a quarter of the SMs on a GPU.
   */
  default int autoGemmSmCarveout() {
    return 0;
  }

  /**
   * A new timeline of this device's work (Note [step timeline] in StepTimeline); the caller closes it. Default:
   * the host clock, right for devices whose ops are done when their call returns.
   */
  default StepTimeline newTimeline() {
    return StepTimeline.hostClock();
  }

  /** Waits until all queued work is done. */
  void synchronize();

  /** Frees every allocation of this device. Idempotent. */
  @Override
  void close();

  // ---- channels-last layout (GPU performance): see Tensor#channelsLast ----

  /** Whether this device can hold 4-D activations channels-last (NHWC) for its convolutional ops. */
  default boolean supportsChannelsLast() {
    return false;
  }

  /**
   * dst (=, or += when {@code accumulate}) = src, the same logical (N, C, H, W) tensor stored in dst's layout
   * ({@code toChannelsLast}; dst is marked so), from src's layout ({@link Tensor#channelsLast()}), converting
   * the dtype too. Conv filters (K, C, kh, kw) convert the same way (NHWC filters are (K, kh, kw, C)).
   */
  default void convertLayout(Tensor src, Tensor dst, boolean toChannelsLast, boolean accumulate) {
    throw new UnsupportedOperationException(name() + " has no channels-last layout");
  }

  /**
   * Declares the layout an op should write {@code t} in when its inputs do not say (average pooling's backward
   * reads only dy). Default: only channels-first exists.
   */
  default void markChannelsLast(Tensor t, boolean on) {
    if (on) {
      throw new UnsupportedOperationException(name() + " has no channels-last layout");
    }
  }

  // ---- convolutional layers (issue 6): channels-first (N, C, H, W), FLOAT32 ----
  // Defaults throw, so a backend without them still compiles; the CPU backend implements all of them.

  /**
   * y = cross-correlation of x with w (+ bias per output channel), as torch.nn.functional.conv2d:
   * x (N, C, H, W), w (K, C / groups, kh, kw), bias (K) or null, y (N, K, OH, OW) (overwritten); the geometry
   * is {@code desc} (see {@link Conv2dDesc}).
   */
  default void conv2dForward(Tensor x, Tensor w, Tensor bias, Tensor y, Conv2dDesc desc) {
    throw new UnsupportedOperationException(name() + " does not implement conv2dForward yet");
  }

  /**
   * {@link #conv2dForward(Tensor, Tensor, Tensor, Tensor, Conv2dDesc)} followed by y = max(y, 0) when
   * {@code relu} (the ReLU after a convolution, fused into its bias pass where the backend can). Default: the
   * two ops.
   */
  default void conv2dForward(Tensor x, Tensor w, Tensor bias, Tensor y, Conv2dDesc desc, boolean relu) {
    conv2dForward(x, w, bias, y, desc);
    if (relu) {
      relu(y, y);
    }
  }

  /** dx (N, C, H, W) = dL/dx of {@link #conv2dForward} for dy (N, K, OH, OW) (overwritten, not accumulated). */
  default void conv2dBackwardData(Tensor dy, Tensor w, Tensor dx, Conv2dDesc desc) {
    throw new UnsupportedOperationException(name() + " does not implement conv2dBackwardData yet");
  }

  /** dw (K, C / groups, kh, kw) += dL/dw; when dbias (K) is not null, dbias += dy summed over (N, OH, OW). */
  default void conv2dBackwardFilter(Tensor x, Tensor dy, Tensor dw, Tensor dbias, Conv2dDesc desc) {
    throw new UnsupportedOperationException(name() + " does not implement conv2dBackwardFilter yet");
  }

  /** y (N, C, OH, OW) = maximum over each window of x (N, C, H, W); padding counts as -infinity. */
  default void maxPool2dForward(Tensor x, Tensor y, Pool2dDesc desc) {
    throw new UnsupportedOperationException(name() + " does not implement maxPool2dForward yet");
  }

  /**
   * dx (overwritten) = dy routed to the maximum of each window (the first one in row-major order on ties,
   * as PyTorch); overlapping windows add up. x and y are the forward's input and output.
   */
  default void maxPool2dBackward(Tensor x, Tensor y, Tensor dy, Tensor dx, Pool2dDesc desc) {
    throw new UnsupportedOperationException(name() + " does not implement maxPool2dBackward yet");
  }

  /** y (N, C, OH, OW) = sum over each window of x / (kh * kw) (padding counts as zeros in the divisor). */
  default void avgPool2dForward(Tensor x, Tensor y, Pool2dDesc desc) {
    throw new UnsupportedOperationException(name() + " does not implement avgPool2dForward yet");
  }

  /** dx (overwritten) = dL/dx of {@link #avgPool2dForward}: each dy spread evenly over its window. */
  default void avgPool2dBackward(Tensor dy, Tensor dx, Pool2dDesc desc) {
    throw new UnsupportedOperationException(name() + " does not implement avgPool2dBackward yet");
  }

  /**
   * Batch normalisation in training mode, as torch.nn.BatchNorm2d: per channel c of x (N, C, spatial...),
   * over the N * spatial values, mean and biased variance var; y = gamma (x - mean) / sqrt(var + eps) + beta.
   * saveMean (C) and saveInvStd (C) receive mean and 1 / sqrt(var + eps) for the backward. runningMean and
   * runningVar (C) become (1 - momentum) running + momentum stat, with the unbiased variance (var * M / (M - 1),
   * M = N * spatial), which is cuDNN's exponentialAverageFactor = momentum. Needs M > 1.
   */
  default void batchNormForwardTraining(Tensor x, Tensor gamma, Tensor beta, Tensor y, Tensor runningMean,
      Tensor runningVar, float momentum, float eps, Tensor saveMean, Tensor saveInvStd) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormForwardTraining yet");
  }

  /** Batch normalisation in evaluation mode: y = gamma (x - runningMean) / sqrt(runningVar + eps) + beta. */
  default void batchNormForwardInference(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean,
      Tensor runningVar, float eps, Tensor y) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormForwardInference yet");
  }

  /**
   * Backward of {@link #batchNormForwardTraining} with its saved mean and inverse std: dx (overwritten),
   * dgamma += sum(dy * xhat), dbeta += sum(dy) per channel, xhat = (x - mean) * invStd.
   */
  default void batchNormBackward(Tensor x, Tensor dy, Tensor gamma, Tensor saveMean, Tensor saveInvStd,
      Tensor dx, Tensor dgamma, Tensor dbeta) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormBackward yet");
  }

  /**
   * {@link #batchNormForwardTraining(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, float, float, Tensor,
   * Tensor)} followed by y = max(y, 0) when {@code relu} (batch norm and the ReLU after it, one pass where the
   * backend fuses them). Default: the two ops.
   */
  default void batchNormForwardTraining(Tensor x, Tensor gamma, Tensor beta, Tensor y, Tensor runningMean,
      Tensor runningVar, float momentum, float eps, Tensor saveMean, Tensor saveInvStd, boolean relu) {
    batchNormForwardTraining(x, gamma, beta, y, runningMean, runningVar, momentum, eps, saveMean, saveInvStd);
    if (relu) {
      relu(y, y);
    }
  }

  /**
   * Backward of the fused batch norm + ReLU ({@code relu} true above), whose output was y: dx (overwritten) =
   * dL/dx for dy = dL/dy, dgamma and dbeta accumulated as in {@link #batchNormBackward}. Default: the ReLU's
   * backward into dx, then batchNormBackward with dx as its dy (so batchNormBackward must allow dy == dx, as
   * the CPU engine's does: each channel's sums are taken before its dx is written).
   */
  default void batchNormBackwardRelu(Tensor x, Tensor y, Tensor dy, Tensor gamma, Tensor beta, Tensor saveMean,
      Tensor saveInvStd, Tensor dx, Tensor dgamma, Tensor dbeta) {
    reluBackward(y, dy, dx);
    batchNormBackward(x, dx, gamma, saveMean, saveInvStd, dx, dgamma, dbeta);
  }

  // ---- synchronised batch norm (SyncBatchNorm): the training forward and backward split at the two places
  // ---- where a layer all-reduces per-channel sums across ranks (Note [synchronised batch norm] in BatchNorm2d).
  // x, y, dy, dx: (N, C, spatial...), FLOAT32 or BFLOAT16 (one dtype per call); every per-channel tensor
  // FLOAT32. Sums are accumulated in double and rounded to float once, in a fixed order (deterministic).

  /** stats (2C) = per channel c: [sum x, sum x^2] over the N * spatial values of channel c (overwritten). */
  default void batchNormStats(Tensor x, Tensor stats) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormStats yet");
  }

  /**
   * From stats (2C) = [sum x, sum x^2] over {@code count} values per channel (all ranks' after the all-reduce),
   * in double: mean = s / count, biased var = max(ss / count - mean^2, 0); mean (C) = mean, invStd (C) =
   * 1 / sqrt(var + eps); when runningMean and runningVar (C) are not null they become (1 - momentum) running +
   * momentum stat with the unbiased variance var * count / (count - 1). Needs count > 1.
   */
  default void batchNormFinalizeStats(Tensor stats, long count, float momentum, float eps, Tensor mean,
      Tensor invStd, Tensor runningMean, Tensor runningVar) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormFinalizeStats yet");
  }

  /** y = gamma (x - mean) invStd + beta per channel (overwritten; the training forward's normalisation). */
  default void batchNormApply(Tensor x, Tensor gamma, Tensor beta, Tensor mean, Tensor invStd, Tensor y) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormApply yet");
  }

  /** sums (2C) = per channel: [sum dy, sum dy * xhat], xhat = (x - mean) invStd (overwritten). */
  default void batchNormBackwardReduce(Tensor x, Tensor dy, Tensor mean, Tensor invStd, Tensor sums) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormBackwardReduce yet");
  }

  /**
   * dx (overwritten) = gamma invStd / M (M dy - sum_dy - xhat sum_dy_xhat) per channel, with [sum_dy,
   * sum_dy_xhat] = sums (2C) over M = {@code count} values (all ranks' after the all-reduce).
   */
  default void batchNormBackwardApply(Tensor x, Tensor dy, Tensor gamma, Tensor mean, Tensor invStd, Tensor sums,
      long count, Tensor dx) {
    throw new UnsupportedOperationException(name() + " does not implement batchNormBackwardApply yet");
  }
}
