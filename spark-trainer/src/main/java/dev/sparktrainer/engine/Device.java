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

  /** A new zero-filled tensor owned by this device (freed when the device closes). */
  Tensor allocate(DType dtype, int... shape);

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
  void dropoutBackward(Tensor dy, Tensor dx, float p, long seed, long offset);

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

  /** Waits until all queued work is done. */
  void synchronize();

  /** Frees every allocation of this device. Idempotent. */
  @Override
  void close();
}
