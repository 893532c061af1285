package dev.sparktrainer.cpu;

import dev.ludovic.netlib.blas.BLAS;
import dev.sparktrainer.engine.Bf16;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.GradientSlices;
import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Rng;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * The CPU backend: plain Java loops for elementwise ops and reductions, GEMM through dev.ludovic.netlib's
 * BLAS (native OpenBLAS when the system has libblas.so.3, else its Java implementation). Loops run in a fixed
 * order, so results are bitwise reproducible on one machine.
 */
public final class CpuDevice implements Device {
  private static final float SQRT_2_OVER_PI = 0.7978845608028654f;
  private final BLAS blas;
  private final CpuConv conv; // convolution, pooling and batch norm kernels (issue 6)
  private volatile boolean closed;

  public CpuDevice() {
    this.blas = BLAS.getInstance();
    this.conv = new CpuConv(blas);
  }

  /** Which BLAS implementation netlib picked (for logs and benchmark reports). */
  public String blasName() {
    return blas.getClass().getSimpleName();
  }

  @Override
  public String name() {
    return "cpu";
  }

  @Override
  public CpuTensor allocate(DType dtype, int... shape) {
    ensureOpen();
    int n = Math.toIntExact(Shape.numel(shape));
    if (dtype == DType.INT32) {
      return new CpuTensor(this, dtype, shape, null, new int[n], 0);
    }
    return new CpuTensor(this, dtype, shape, new float[n], null, 0);
  }

  /** Checks that {@code t} is an allocation of this device, then drops it: the garbage collector frees it. */
  @Override
  public void free(Tensor t) {
    CpuTensor c = t(t);
    if (!c.root) {
      throw new IllegalArgumentException("free: " + t + " is a view or a region of an allocation; only a tensor"
          + " that allocate returned can be freed");
    }
  }

  private void ensureOpen() {
    if (closed) {
      throw new IllegalStateException("CpuDevice is closed");
    }
  }

  private CpuTensor t(Tensor x) {
    if (!(x instanceof CpuTensor) || x.device() != this) {
      throw new IllegalArgumentException(x + " does not belong to this CPU device");
    }
    return (CpuTensor) x;
  }

  private CpuTensor fl(Tensor x) {
    CpuTensor c = t(x);
    if (c.f == null) {
      throw new IllegalArgumentException("expected a float tensor, got " + x);
    }
    return c;
  }

  private CpuTensor in(Tensor x) {
    CpuTensor c = t(x);
    if (c.i == null) {
      throw new IllegalArgumentException("expected an int32 tensor, got " + x);
    }
    return c;
  }

  private static void sameSize(Tensor a, Tensor b, String op) {
    if (a.numel() != b.numel()) {
      throw new IllegalArgumentException(op + ": sizes differ: " + a + " vs " + b);
    }
  }

  /** Rounds a float to the nearest bf16 value (ties to even), as the GPU cast does ({@link Bf16#round}). */
  public static float roundBf16(float v) {
    return Bf16.round(v);
  }

  private static void storeRounded(CpuTensor dst) {
    if (dst.dtype() == DType.BFLOAT16) {
      float[] d = dst.f;
      for (int k = dst.offset, e = dst.offset + dst.size(); k < e; k++) {
        d[k] = roundBf16(d[k]);
      }
    }
  }

  @Override
  public void upload(float[] src, int srcOffset, Tensor dst) {
    CpuTensor d = fl(dst);
    System.arraycopy(src, srcOffset, d.f, d.offset, d.size());
    storeRounded(d);
  }

  @Override
  public void upload(int[] src, int srcOffset, Tensor dst) {
    CpuTensor d = in(dst);
    System.arraycopy(src, srcOffset, d.i, d.offset, d.size());
  }

  @Override
  public void upload(ByteBuffer src, Tensor dst) {
    CpuTensor d = t(dst);
    ByteBuffer b = src.duplicate().order(ByteOrder.LITTLE_ENDIAN);
    int n = d.size();
    if (d.dtype() == DType.INT32) {
      b.asIntBuffer().get(d.i, d.offset, n);
    } else if (d.dtype() == DType.FLOAT32) {
      b.asFloatBuffer().get(d.f, d.offset, n);
    } else {
      for (int k = 0; k < n; k++) {
        d.f[d.offset + k] = Float.intBitsToFloat((b.getShort(b.position() + 2 * k) & 0xffff) << 16);
      }
    }
  }

  @Override
  public void download(Tensor src, float[] dst, int dstOffset) {
    CpuTensor s = fl(src);
    System.arraycopy(s.f, s.offset, dst, dstOffset, s.size());
  }

  @Override
  public void download(Tensor src, int[] dst, int dstOffset) {
    CpuTensor s = in(src);
    System.arraycopy(s.i, s.offset, dst, dstOffset, s.size());
  }

  @Override
  public void fill(Tensor x, float value) {
    CpuTensor c = t(x);
    if (c.i != null) {
      java.util.Arrays.fill(c.i, c.offset, c.offset + c.size(), (int) value);
    } else {
      java.util.Arrays.fill(c.f, c.offset, c.offset + c.size(), value);
      storeRounded(c);
    }
  }

  @Override
  public void copy(Tensor src, Tensor dst) {
    sameSize(src, dst, "copy");
    CpuTensor s = t(src);
    CpuTensor d = t(dst);
    if (s.i != null || d.i != null) {
      System.arraycopy(in(src).i, s.offset, in(dst).i, d.offset, s.size());
      return;
    }
    System.arraycopy(s.f, s.offset, d.f, d.offset, s.size());
    storeRounded(d);
  }

  @Override
  public void sumSlices(GradientSlices src, Tensor dst) {
    CpuTensor d = fl(dst);
    int n = d.size();
    int ways = src.ways();
    if (src.sliceSize() != n || src.slices().dtype() != dst.dtype()) {
      throw new IllegalArgumentException("sumSlices: src must hold " + ways + " slices of dst's " + n + " elements"
          + " and dtype, got " + src.slices() + " and " + dst);
    }
    CpuTensor[] parts = new CpuTensor[ways];
    for (int j = 0; j < ways; j++) {
      parts[j] = fl(src.slice(j));
    }
    for (int k = 0; k < n; k++) {
      float v = parts[0].f[parts[0].offset + k]; // the first as it is: -0 + -0 stays -0, as NCCL's sum
      for (int j = 1; j < ways; j++) {
        v += parts[j].f[parts[j].offset + k];
      }
      d.f[d.offset + k] = v;
    }
    storeRounded(d);
  }

  @Override
  public void axpy(float alpha, Tensor x, Tensor y) {
    sameSize(x, y, "axpy");
    CpuTensor a = fl(x);
    CpuTensor b = fl(y);
    float[] xf = a.f;
    float[] yf = b.f;
    for (int k = 0, n = a.size(), xo = a.offset, yo = b.offset; k < n; k++) {
      yf[yo + k] += alpha * xf[xo + k];
    }
    storeRounded(b);
  }

  @Override
  public void scale(Tensor x, float alpha) {
    CpuTensor a = fl(x);
    for (int k = a.offset, e = a.offset + a.size(); k < e; k++) {
      a.f[k] *= alpha;
    }
    storeRounded(a);
  }

  @Override
  public double sum(Tensor x) {
    CpuTensor a = t(x);
    double s = 0;
    if (a.i != null) {
      for (int k = a.offset, e = a.offset + a.size(); k < e; k++) {
        s += a.i[k];
      }
    } else {
      for (int k = a.offset, e = a.offset + a.size(); k < e; k++) {
        s += a.f[k];
      }
    }
    return s;
  }

  @Override
  public double sumSquares(Tensor x) {
    CpuTensor a = fl(x);
    double s = 0;
    for (int k = a.offset, e = a.offset + a.size(); k < e; k++) {
      double v = a.f[k];
      s += v * v;
    }
    return s;
  }

  @Override
  public void sumInto(Tensor x, Tensor accum) {
    CpuTensor acc = fl(accum);
    acc.f[acc.offset] += (float) sum(x);
  }

  @Override
  public void matmul(Tensor a, boolean transA, Tensor b, boolean transB, Tensor c, float alpha, float beta) {
    int[] mnk = Shape.checkMatmul(a, transA, b, transB, c);
    int m = mnk[0];
    int n = mnk[1];
    int k = mnk[2];
    CpuTensor ca = fl(a);
    CpuTensor cb = fl(b);
    CpuTensor cc = fl(c);
    if (m == 0 || n == 0) {
      return;
    }
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    blas.sgemm(transB ? "T" : "N", transA ? "T" : "N", n, m, k, alpha,
        cb.f, cb.offset, Math.max(1, b.dim(1)), ca.f, ca.offset, Math.max(1, a.dim(1)),
        beta, cc.f, cc.offset, Math.max(1, n));
    storeRounded(cc);
  }

  @Override
  public void addBias(Tensor y, Tensor bias) {
    CpuTensor cy = fl(y);
    CpuTensor cbias = fl(bias);
    int cols = bias.size();
    if (y.rank() < 2 || Shape.rowSize(y.shape()) != cols) {
      throw new IllegalArgumentException("addBias: " + y + " rows do not match bias " + bias);
    }
    int rows = y.dim(0);
    for (int r = 0; r < rows; r++) {
      int base = cy.offset + r * cols;
      for (int j = 0; j < cols; j++) {
        cy.f[base + j] += cbias.f[cbias.offset + j];
      }
    }
    storeRounded(cy);
  }

  @Override
  public void biasGrad(Tensor dy, Tensor dbias) {
    CpuTensor cdy = fl(dy);
    CpuTensor cdb = fl(dbias);
    int cols = dbias.size();
    if (dy.rank() < 2 || Shape.rowSize(dy.shape()) != cols) {
      throw new IllegalArgumentException("biasGrad: " + dy + " rows do not match " + dbias);
    }
    int rows = dy.dim(0);
    for (int j = 0; j < cols; j++) {
      float s = 0;
      for (int r = 0; r < rows; r++) {
        s += cdy.f[cdy.offset + r * cols + j];
      }
      cdb.f[cdb.offset + j] += s;
    }
    storeRounded(cdb); // a bf16 bias gradient (Note [bf16 gradients] in nn.Model) holds the rounded sum, as on the GPU
  }

  @Override
  public void relu(Tensor x, Tensor y) {
    sameSize(x, y, "relu");
    CpuTensor a = fl(x);
    CpuTensor b = fl(y);
    for (int k = 0, n = a.size(); k < n; k++) {
      float v = a.f[a.offset + k];
      b.f[b.offset + k] = v > 0 ? v : 0f;
    }
  }

  @Override
  public void reluBackward(Tensor x, Tensor dy, Tensor dx) {
    sameSize(x, dy, "reluBackward");
    sameSize(x, dx, "reluBackward");
    CpuTensor a = fl(x);
    CpuTensor g = fl(dy);
    CpuTensor o = fl(dx);
    for (int k = 0, n = a.size(); k < n; k++) {
      o.f[o.offset + k] = a.f[a.offset + k] > 0 ? g.f[g.offset + k] : 0f;
    }
  }

  @Override
  public void gelu(Tensor x, Tensor y) {
    sameSize(x, y, "gelu");
    CpuTensor a = fl(x);
    CpuTensor b = fl(y);
    for (int k = 0, n = a.size(); k < n; k++) {
      float v = a.f[a.offset + k];
      float u = SQRT_2_OVER_PI * (v + 0.044715f * v * v * v);
      b.f[b.offset + k] = 0.5f * v * (1f + (float) Math.tanh(u));
    }
  }

  @Override
  public void geluBackward(Tensor x, Tensor dy, Tensor dx) {
    sameSize(x, dy, "geluBackward");
    sameSize(x, dx, "geluBackward");
    CpuTensor a = fl(x);
    CpuTensor g = fl(dy);
    CpuTensor o = fl(dx);
    for (int k = 0, n = a.size(); k < n; k++) {
      float v = a.f[a.offset + k];
      float u = SQRT_2_OVER_PI * (v + 0.044715f * v * v * v);
      float th = (float) Math.tanh(u);
      float sech2 = 1f - th * th;
      float d = 0.5f * (1f + th) + 0.5f * v * sech2 * SQRT_2_OVER_PI * (1f + 3f * 0.044715f * v * v);
      o.f[o.offset + k] = g.f[g.offset + k] * d;
    }
  }

  @Override
  public void dropout(Tensor x, Tensor y, float p, long seed, long offset) {
    sameSize(x, y, "dropout");
    CpuTensor a = fl(x);
    CpuTensor b = fl(y);
    float s = 1f / (1f - p);
    for (int k = 0, n = a.size(); k < n; k++) {
      boolean keep = Rng.uniform(seed, offset + k) >= p;
      b.f[b.offset + k] = keep ? a.f[a.offset + k] * s : 0f;
    }
  }

  @Override
  public void softmaxCrossEntropy(Tensor logits, Tensor labels, Tensor losses, Tensor dlogits,
      float gradScale) {
    Shape.checkLogits(logits, labels, "softmaxCrossEntropy");
    CpuTensor z = fl(logits);
    CpuTensor y = in(labels);
    CpuTensor l = fl(losses);
    CpuTensor dz = dlogits == null ? null : fl(dlogits);
    int rows = logits.dim(0);
    int cols = logits.dim(1);
    for (int r = 0; r < rows; r++) {
      int base = z.offset + r * cols;
      int label = y.i[y.offset + r];
      if (label < 0 || label >= cols) {
        throw new IllegalArgumentException("label " + label + " at row " + r + " is outside [0, " + cols + ")");
      }
      float max = Float.NEGATIVE_INFINITY;
      for (int j = 0; j < cols; j++) {
        max = Math.max(max, z.f[base + j]);
      }
      double sum = 0;
      for (int j = 0; j < cols; j++) {
        sum += Math.exp(z.f[base + j] - max);
      }
      float logSum = (float) Math.log(sum);
      l.f[l.offset + r] = logSum - (z.f[base + label] - max);
      if (dz != null) {
        int dbase = dz.offset + r * cols;
        for (int j = 0; j < cols; j++) {
          float pj = (float) (Math.exp(z.f[base + j] - max) / sum);
          dz.f[dbase + j] = (pj - (j == label ? 1f : 0f)) * gradScale;
        }
      }
    }
  }

  @Override
  public void mse(Tensor pred, Tensor target, Tensor losses, Tensor dpred, float gradScale) {
    sameSize(pred, target, "mse");
    CpuTensor p = fl(pred);
    CpuTensor t = fl(target);
    CpuTensor l = fl(losses);
    CpuTensor dp = dpred == null ? null : fl(dpred);
    int rows = pred.dim(0);
    int cols = Shape.rowSize(pred.shape());
    for (int r = 0; r < rows; r++) {
      float s = 0;
      for (int j = 0; j < cols; j++) {
        float d = p.f[p.offset + r * cols + j] - t.f[t.offset + r * cols + j];
        s += d * d;
        if (dp != null) {
          dp.f[dp.offset + r * cols + j] = 2f * d / cols * gradScale;
        }
      }
      l.f[l.offset + r] = s / cols;
    }
  }

  private static int argmaxRow(float[] f, int base, int cols) {
    int best = 0;
    for (int j = 1; j < cols; j++) {
      if (f[base + j] > f[base + best]) {
        best = j;
      }
    }
    return best;
  }

  @Override
  public void countCorrect(Tensor logits, Tensor labels, Tensor correct) {
    Shape.checkLogits(logits, labels, "countCorrect");
    CpuTensor z = fl(logits);
    CpuTensor y = in(labels);
    CpuTensor c = fl(correct);
    int rows = logits.dim(0);
    int cols = logits.dim(1);
    int n = 0;
    for (int r = 0; r < rows; r++) {
      if (argmaxRow(z.f, z.offset + r * cols, cols) == y.i[y.offset + r]) {
        n++;
      }
    }
    c.f[c.offset] += n;
  }

  @Override
  public void argmax(Tensor logits, Tensor out) {
    Shape.checkLogits(logits, out, "argmax");
    CpuTensor z = fl(logits);
    CpuTensor o = in(out);
    int cols = logits.dim(1);
    for (int r = 0, rows = logits.dim(0); r < rows; r++) {
      o.i[o.offset + r] = argmaxRow(z.f, z.offset + r * cols, cols);
    }
  }

  @Override
  public void softmax(Tensor logits, Tensor probs) {
    sameSize(logits, probs, "softmax");
    CpuTensor z = fl(logits);
    CpuTensor p = fl(probs);
    int rows = logits.dim(0);
    int cols = Shape.rowSize(logits.shape());
    for (int r = 0; r < rows; r++) {
      int base = z.offset + r * cols;
      float max = Float.NEGATIVE_INFINITY;
      for (int j = 0; j < cols; j++) {
        max = Math.max(max, z.f[base + j]);
      }
      double sum = 0;
      for (int j = 0; j < cols; j++) {
        sum += Math.exp(z.f[base + j] - max);
      }
      for (int j = 0; j < cols; j++) {
        p.f[p.offset + r * cols + j] = (float) (Math.exp(z.f[base + j] - max) / sum);
      }
    }
  }

  @Override
  public void sgdStep(Tensor params, Tensor grads, Tensor momentumBuf, float lr, float momentum,
      boolean nesterov, float weightDecay, boolean firstStep) {
    sameSize(params, grads, "sgdStep");
    CpuTensor p = fl(params);
    CpuTensor g = fl(grads);
    CpuTensor b = momentum != 0f ? fl(momentumBuf) : null;
    if (b != null) {
      sameSize(params, momentumBuf, "sgdStep");
    }
    for (int k = 0, n = p.size(); k < n; k++) {
      float pv = p.f[p.offset + k];
      float gv = g.f[g.offset + k] + weightDecay * pv;
      if (b != null) {
        float bv = firstStep ? gv : momentum * b.f[b.offset + k] + gv;
        b.f[b.offset + k] = bv;
        gv = nesterov ? gv + momentum * bv : bv;
      }
      p.f[p.offset + k] = pv - lr * gv;
    }
  }

  @Override
  public void adamwStep(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2,
      float eps, float weightDecay, long step) {
    sameSize(params, grads, "adamwStep");
    sameSize(params, m, "adamwStep");
    sameSize(params, v, "adamwStep");
    CpuTensor p = fl(params);
    CpuTensor g = fl(grads);
    CpuTensor cm = fl(m);
    CpuTensor cv = fl(v);
    float bc1 = 1f - (float) Math.pow(beta1, step);
    float bc2 = 1f - (float) Math.pow(beta2, step);
    for (int k = 0, n = p.size(); k < n; k++) {
      float gv = g.f[g.offset + k];
      float pv = p.f[p.offset + k] * (1f - lr * weightDecay);
      float mv = beta1 * cm.f[cm.offset + k] + (1f - beta1) * gv;
      float vv = beta2 * cv.f[cv.offset + k] + (1f - beta2) * gv * gv;
      cm.f[cm.offset + k] = mv;
      cv.f[cv.offset + k] = vv;
      p.f[p.offset + k] = pv - lr * (mv / bc1) / ((float) Math.sqrt(vv / bc2) + eps);
    }
  }

  @Override
  public void synchronize() {
    // CPU ops complete before they return.
  }

  @Override
  public void close() {
    closed = true;
  }

  // ---- convolutional layers (issue 6): kernels in CpuConv ----

  private CpuTensor f32(Tensor x, String op) {
    CpuTensor c = fl(x);
    if (c.dtype() != DType.FLOAT32) {
      throw new IllegalArgumentException(op + " supports float32 only on the CPU, got " + x);
    }
    return c;
  }

  private static void checkBias(Tensor bias, Tensor w, String op) {
    if (bias != null && (bias.rank() != 1 || bias.dim(0) != w.dim(0))) {
      throw new IllegalArgumentException(op + ": bias " + bias + " must be (K) for filters " + w);
    }
  }

  @Override
  public void conv2dForward(Tensor x, Tensor w, Tensor bias, Tensor y, Conv2dDesc desc) {
    desc.check(x.shape(), w.shape(), y.shape(), "conv2dForward");
    checkBias(bias, w, "conv2dForward");
    conv.conv2dForward(f32(x, "conv2dForward"), f32(w, "conv2dForward"),
        bias == null ? null : f32(bias, "conv2dForward"), f32(y, "conv2dForward"), desc);
  }

  @Override
  public void conv2dBackwardData(Tensor dy, Tensor w, Tensor dx, Conv2dDesc desc) {
    desc.check(dx.shape(), w.shape(), dy.shape(), "conv2dBackwardData");
    conv.conv2dBackwardData(f32(dy, "conv2dBackwardData"), f32(w, "conv2dBackwardData"),
        f32(dx, "conv2dBackwardData"), desc);
  }

  @Override
  public void conv2dBackwardFilter(Tensor x, Tensor dy, Tensor dw, Tensor dbias, Conv2dDesc desc) {
    desc.check(x.shape(), dw.shape(), dy.shape(), "conv2dBackwardFilter");
    checkBias(dbias, dw, "conv2dBackwardFilter");
    conv.conv2dBackwardFilter(f32(x, "conv2dBackwardFilter"), f32(dy, "conv2dBackwardFilter"),
        f32(dw, "conv2dBackwardFilter"), dbias == null ? null : f32(dbias, "conv2dBackwardFilter"), desc);
  }

  @Override
  public void maxPool2dForward(Tensor x, Tensor y, Pool2dDesc desc) {
    desc.check(x.shape(), y.shape(), "maxPool2dForward");
    CpuConv.maxPool2dForward(f32(x, "maxPool2dForward"), f32(y, "maxPool2dForward"), desc);
  }

  @Override
  public void maxPool2dBackward(Tensor x, Tensor y, Tensor dy, Tensor dx, Pool2dDesc desc) {
    desc.check(x.shape(), dy.shape(), "maxPool2dBackward");
    desc.check(dx.shape(), y.shape(), "maxPool2dBackward");
    CpuConv.maxPool2dBackward(f32(x, "maxPool2dBackward"), f32(dy, "maxPool2dBackward"),
        f32(dx, "maxPool2dBackward"), desc);
  }

  @Override
  public void avgPool2dForward(Tensor x, Tensor y, Pool2dDesc desc) {
    desc.check(x.shape(), y.shape(), "avgPool2dForward");
    CpuConv.avgPool2dForward(f32(x, "avgPool2dForward"), f32(y, "avgPool2dForward"), desc);
  }

  @Override
  public void avgPool2dBackward(Tensor dy, Tensor dx, Pool2dDesc desc) {
    desc.check(dx.shape(), dy.shape(), "avgPool2dBackward");
    CpuConv.avgPool2dBackward(f32(dy, "avgPool2dBackward"), f32(dx, "avgPool2dBackward"), desc);
  }

  /** x (N, C, ...) and y alike; every per-channel tensor (C). */
  private static void checkNorm(Tensor x, Tensor y, String op, Tensor... perChannel) {
    if (x.rank() < 2 || !java.util.Arrays.equals(x.shape(), y.shape())) {
      throw new IllegalArgumentException(op + ": x " + x + " must be (N, C, ...) and y the same shape, got y " + y);
    }
    for (Tensor t : perChannel) {
      if (t.numel() != x.dim(1)) {
        throw new IllegalArgumentException(op + ": " + t + " must have one element per channel of " + x);
      }
    }
  }

  @Override
  public void batchNormForwardTraining(Tensor x, Tensor gamma, Tensor beta, Tensor y, Tensor runningMean,
      Tensor runningVar, float momentum, float eps, Tensor saveMean, Tensor saveInvStd) {
    String op = "batchNormForwardTraining";
    checkNorm(x, y, op, gamma, beta, runningMean, runningVar, saveMean, saveInvStd);
    if (x.numel() / x.dim(1) <= 1) {
      throw new IllegalArgumentException(op + ": training needs more than one value per channel, got " + x
          + "; use a larger batch, or evaluation mode");
    }
    CpuConv.batchNormForwardTraining(f32(x, op), f32(gamma, op), f32(beta, op), f32(y, op), f32(runningMean, op),
        f32(runningVar, op), momentum, eps, f32(saveMean, op), f32(saveInvStd, op));
  }

  @Override
  public void batchNormForwardInference(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean,
      Tensor runningVar, float eps, Tensor y) {
    String op = "batchNormForwardInference";
    checkNorm(x, y, op, gamma, beta, runningMean, runningVar);
    CpuConv.batchNormForwardInference(f32(x, op), f32(gamma, op), f32(beta, op), f32(runningMean, op),
        f32(runningVar, op), eps, f32(y, op));
  }

  @Override
  public void batchNormBackward(Tensor x, Tensor dy, Tensor gamma, Tensor saveMean, Tensor saveInvStd,
      Tensor dx, Tensor dgamma, Tensor dbeta) {
    String op = "batchNormBackward";
    checkNorm(x, dy, op, gamma, saveMean, saveInvStd, dgamma, dbeta);
    checkNorm(x, dx, op);
    CpuConv.batchNormBackward(f32(x, op), f32(dy, op), f32(gamma, op), f32(saveMean, op), f32(saveInvStd, op),
        f32(dx, op), f32(dgamma, op), f32(dbeta, op));
  }

  // ---- synchronised batch norm: kernels in CpuConv ----

  /** x and the others: one activation dtype, FLOAT32 or BFLOAT16, one shape (N, C, ...). */
  private CpuTensor act(Tensor x, String op, Tensor... same) {
    CpuTensor c = fl(x);
    if (c.rank() < 2) {
      throw new IllegalArgumentException(op + ": x " + x + " must be (N, C, ...)");
    }
    for (Tensor t : same) {
      if (t.dtype() != x.dtype() || !java.util.Arrays.equals(t.shape(), x.shape())) {
        throw new IllegalArgumentException(op + ": " + t + " must have the dtype and shape of x " + x);
      }
      fl(t);
    }
    return c;
  }

  /** A FLOAT32 tensor of n elements (per channel: n = C; sums: n = 2C). */
  private CpuTensor channels(Tensor t, int n, String what, String op) {
    CpuTensor c = f32(t, op);
    if (c.numel() != n) {
      throw new IllegalArgumentException(op + ": " + what + " " + t + " must have " + n + " elements");
    }
    return c;
  }

  @Override
  public void batchNormStats(Tensor x, Tensor stats) {
    String op = "batchNormStats";
    CpuConv.batchNormStats(act(x, op), channels(stats, 2 * x.dim(1), "stats", op));
  }

  @Override
  public void batchNormFinalizeStats(Tensor stats, long count, float momentum, float eps, Tensor mean,
      Tensor invStd, Tensor runningMean, Tensor runningVar) {
    String op = "batchNormFinalizeStats";
    int c = mean.size();
    Shape.checkBatchNormFinalize(count, runningMean, runningVar, op);
    CpuConv.batchNormFinalizeStats(channels(stats, 2 * c, "stats", op), count, momentum, eps,
        channels(mean, c, "mean", op), channels(invStd, c, "invStd", op),
        runningMean == null ? null : channels(runningMean, c, "runningMean", op),
        runningVar == null ? null : channels(runningVar, c, "runningVar", op));
  }

  @Override
  public void batchNormApply(Tensor x, Tensor gamma, Tensor beta, Tensor mean, Tensor invStd, Tensor y) {
    String op = "batchNormApply";
    CpuTensor cx = act(x, op, y);
    int c = x.dim(1);
    CpuConv.batchNormApply(cx, channels(gamma, c, "gamma", op), channels(beta, c, "beta", op),
        channels(mean, c, "mean", op), channels(invStd, c, "invStd", op), fl(y));
  }

  @Override
  public void batchNormBackwardReduce(Tensor x, Tensor dy, Tensor mean, Tensor invStd, Tensor sums) {
    String op = "batchNormBackwardReduce";
    CpuTensor cx = act(x, op, dy);
    int c = x.dim(1);
    CpuConv.batchNormBackwardReduce(cx, fl(dy), channels(mean, c, "mean", op),
        channels(invStd, c, "invStd", op), channels(sums, 2 * c, "sums", op));
  }

  @Override
  public void batchNormBackwardApply(Tensor x, Tensor dy, Tensor gamma, Tensor mean, Tensor invStd, Tensor sums,
      long count, Tensor dx) {
    String op = "batchNormBackwardApply";
    CpuTensor cx = act(x, op, dy, dx);
    int c = x.dim(1);
    if (count <= 0) {
      throw new IllegalArgumentException(op + ": count must be > 0, got " + count);
    }
    CpuConv.batchNormBackwardApply(cx, fl(dy), channels(gamma, c, "gamma", op),
        channels(mean, c, "mean", op), channels(invStd, c, "invStd", op), channels(sums, 2 * c, "sums", op), count,
        fl(dx));
  }
}
