package dev.sparktrainer.cpu;

import dev.ludovic.netlib.blas.BLAS;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Pool2dDesc;

/**
 * The CPU kernels of the convolutional ops (issue 6), channels-first (N, C, H, W), float32: convolution as
 * im2col + BLAS GEMM, pooling and batch normalisation as plain loops. Loops run in a fixed order, so results
 * are bitwise reproducible on one machine. {@link CpuDevice} checks shapes and calls these.
 *
 * <p>Note [batched im2col]: the samples of a batch are unfolded side by side into one matrix col
 * (C/groups * kh * kw, nb * OH * OW), so each group is one large GEMM per chunk of nb samples rather than nb
 * small ones (about 1.3x faster for the Fashion-MNIST CNN's second convolution); nb is chosen so col holds at
 * most a cap of floats (default {@value #DEFAULT_COL_CAP}, 64 MiB; system property {@value #COL_CAP_PROPERTY}),
 * or one sample when a single one is larger, which keeps ResNet-50 at 224x224 to a bounded scratch. The GEMM's output
 * (K/groups, nb * OH * OW) is then copied into (N, K, OH, OW) (or dy gathered from it for the backward).
 * 1x1 convolutions with stride 1 and no padding need no im2col: one GEMM per sample on x itself.
 *
 * <p>Not thread-safe: the scratch buffers are shared, as a device is used by one thread at a time.
 */
final class CpuConv {
  /** Default largest im2col scratch, in floats (64 MiB). */
  static final int DEFAULT_COL_CAP = 1 << 24;
  /** System property that overrides it (read when the device is made). */
  static final String COL_CAP_PROPERTY = "sparktrainer.cpu.im2colFloats";
  private final BLAS blas;
  private final int colCap;
  private float[] col = new float[0]; // (C/groups * kh * kw, nb * OH * OW) im2col scratch, grown on demand
  private float[] tmp = new float[0]; // (K/groups, nb * OH * OW) GEMM output / gathered dy

  CpuConv(BLAS blas) {
    this.blas = blas;
    this.colCap = Math.max(1, Integer.getInteger(COL_CAP_PROPERTY, DEFAULT_COL_CAP));
  }

  /** Row-major C (m, n) = alpha op(A) op(B) + beta C with leading dimensions (row lengths) lda, ldb, ldc. */
  private void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, float[] a, int ao, int lda,
      float[] b, int bo, int ldb, float beta, float[] c, int co, int ldc) {
    if (m == 0 || n == 0) {
      return;
    }
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    blas.sgemm(transB ? "T" : "N", transA ? "T" : "N", n, m, k, alpha, b, bo, Math.max(1, ldb), a, ao,
        Math.max(1, lda), beta, c, co, Math.max(1, ldc));
  }

  private float[] colScratch(int n) {
    if (col.length < n) {
      col = new float[n];
    }
    return col;
  }

  private float[] tmpScratch(int n) {
    if (tmp.length < n) {
      tmp = new float[n];
    }
    return tmp;
  }

  /** One convolution's sizes, taken from the shapes. */
  private record Geo(int n, int c, int h, int w, int k, int kh, int kw, int oh, int ow, Conv2dDesc d) {
    int groups() {
      return d.groups();
    }

    int cg() {
      return c / d.groups();
    }

    int kg() {
      return k / d.groups();
    }

    int ckk() {
      return cg() * kh * kw;
    }

    int ohw() {
      return oh * ow;
    }

    /** 1x1, stride 1, no padding: the input of one sample and group is already the im2col matrix. */
    boolean direct() {
      return kh == 1 && kw == 1 && d.strideH() == 1 && d.strideW() == 1 && d.padH() == 0 && d.padW() == 0;
    }

    /** Samples per chunk of at most {@code cap} im2col floats (Note [batched im2col]). */
    int chunk(int cap) {
      return Math.max(1, Math.min(n, cap / Math.max(1, ckk() * ohw())));
    }
  }

  private static Geo geo(int[] x, int[] w, int[] y, Conv2dDesc d) {
    return new Geo(x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3], d);
  }

  private static int ceilDiv(int a, int b) {
    return -Math.floorDiv(-a, b);
  }

  /**
   * col (cg * kh * kw, ld): row (c, i, j), column off + (p, q) holds x[c, p * sh - ph + i * dh, q * sw - pw +
   * j * dw], zero outside the image. x points at channel 0 of the sample's group.
   */
  private static void im2col(float[] x, int xo, Geo g, float[] col, int ld, int off) {
    Conv2dDesc d = g.d();
    int row = 0;
    for (int c = 0; c < g.cg(); c++) {
      int plane = xo + c * g.h() * g.w();
      for (int i = 0; i < g.kh(); i++) {
        int dh = i * d.dilationH() - d.padH();
        for (int j = 0; j < g.kw(); j++, row++) {
          int dw = j * d.dilationW() - d.padW();
          int qLo = Math.min(g.ow(), Math.max(0, ceilDiv(-dw, d.strideW())));
          int qHi = Math.max(qLo, Math.min(g.ow(), ceilDiv(g.w() - dw, d.strideW())));
          int base = row * ld + off;
          for (int p = 0; p < g.oh(); p++) {
            int ih = p * d.strideH() + dh;
            int o = base + p * g.ow();
            if (ih < 0 || ih >= g.h()) {
              java.util.Arrays.fill(col, o, o + g.ow(), 0f);
              continue;
            }
            java.util.Arrays.fill(col, o, o + qLo, 0f);
            int src = plane + ih * g.w() + dw;
            if (d.strideW() == 1) {
              System.arraycopy(x, src + qLo, col, o + qLo, qHi - qLo);
            } else {
              for (int q = qLo; q < qHi; q++) {
                col[o + q] = x[src + q * d.strideW()];
              }
            }
            java.util.Arrays.fill(col, o + qHi, o + g.ow(), 0f);
          }
        }
      }
    }
  }

  /** The adjoint of {@link #im2col}: dx[c, ih, iw] += every col entry that read it. */
  private static void col2im(float[] col, int ld, int off, Geo g, float[] dx, int dxo) {
    Conv2dDesc d = g.d();
    int row = 0;
    for (int c = 0; c < g.cg(); c++) {
      int plane = dxo + c * g.h() * g.w();
      for (int i = 0; i < g.kh(); i++) {
        int dh = i * d.dilationH() - d.padH();
        for (int j = 0; j < g.kw(); j++, row++) {
          int dw = j * d.dilationW() - d.padW();
          int qLo = Math.min(g.ow(), Math.max(0, ceilDiv(-dw, d.strideW())));
          int qHi = Math.max(qLo, Math.min(g.ow(), ceilDiv(g.w() - dw, d.strideW())));
          int base = row * ld + off;
          for (int p = 0; p < g.oh(); p++) {
            int ih = p * d.strideH() + dh;
            if (ih < 0 || ih >= g.h()) {
              continue;
            }
            int o = base + p * g.ow();
            int dst = plane + ih * g.w() + dw;
            for (int q = qLo; q < qHi; q++) {
              dx[dst + q * d.strideW()] += col[o + q];
            }
          }
        }
      }
    }
  }

  /** Copies rows k of the (kg, nb * ohw) matrix m into (or, when toM, from) y's (nb samples, group gr). */
  private static void exchange(float[] m, Geo g, float[] y, int yOffset, int n0, int nb, int gr, boolean toM) {
    int ohw = g.ohw();
    int ld = nb * ohw;
    for (int k = 0; k < g.kg(); k++) {
      for (int s = 0; s < nb; s++) {
        int yo = yOffset + ((n0 + s) * g.k() + gr * g.kg() + k) * ohw;
        if (toM) {
          System.arraycopy(y, yo, m, k * ld + s * ohw, ohw);
        } else {
          System.arraycopy(m, k * ld + s * ohw, y, yo, ohw);
        }
      }
    }
  }

  void conv2dForward(CpuTensor x, CpuTensor w, CpuTensor bias, CpuTensor y, Conv2dDesc d) {
    Geo g = geo(x.shape(), w.shape(), y.shape(), d);
    int ckk = g.ckk();
    int ohw = g.ohw();
    int hw = g.h() * g.w();
    if (g.direct()) {
      for (int n = 0; n < g.n(); n++) {
        for (int gr = 0; gr < g.groups(); gr++) {
          int xo = x.offset + (n * g.c() + gr * g.cg()) * hw;
          int yo = y.offset + (n * g.k() + gr * g.kg()) * ohw;
          gemm(false, false, g.kg(), ohw, ckk, 1f, w.f, w.offset + gr * g.kg() * ckk, ckk, x.f, xo, ohw, 0f, y.f,
              yo, ohw);
        }
      }
    } else {
      int chunk = g.chunk(colCap);
      float[] c = colScratch(ckk * chunk * ohw);
      float[] m = chunk > 1 ? tmpScratch(g.kg() * chunk * ohw) : null;
      for (int n0 = 0; n0 < g.n(); n0 += chunk) {
        int nb = Math.min(chunk, g.n() - n0);
        int ld = nb * ohw;
        for (int gr = 0; gr < g.groups(); gr++) {
          for (int s = 0; s < nb; s++) {
            im2col(x.f, x.offset + ((n0 + s) * g.c() + gr * g.cg()) * hw, g, c, ld, s * ohw);
          }
          int wo = w.offset + gr * g.kg() * ckk;
          if (nb == 1) { // straight into y
            gemm(false, false, g.kg(), ohw, ckk, 1f, w.f, wo, ckk, c, 0, ohw, 0f, y.f,
                y.offset + (n0 * g.k() + gr * g.kg()) * ohw, ohw);
          } else {
            gemm(false, false, g.kg(), ld, ckk, 1f, w.f, wo, ckk, c, 0, ld, 0f, m, 0, ld);
            exchange(m, g, y.f, y.offset, n0, nb, gr, false);
          }
        }
      }
    }
    if (bias != null) {
      for (int n = 0; n < g.n(); n++) {
        for (int k = 0; k < g.k(); k++) {
          float b = bias.f[bias.offset + k];
          int yo = y.offset + (n * g.k() + k) * ohw;
          for (int p = 0; p < ohw; p++) {
            y.f[yo + p] += b;
          }
        }
      }
    }
  }

  void conv2dBackwardData(CpuTensor dy, CpuTensor w, CpuTensor dx, Conv2dDesc d) {
    Geo g = geo(dx.shape(), w.shape(), dy.shape(), d);
    int ckk = g.ckk();
    int ohw = g.ohw();
    int hw = g.h() * g.w();
    if (g.direct()) {
      for (int n = 0; n < g.n(); n++) {
        for (int gr = 0; gr < g.groups(); gr++) {
          // dx_g (cg, hw) = W_g^T (cg, kg) dy_g (kg, hw)
          int xo = dx.offset + (n * g.c() + gr * g.cg()) * hw;
          int yo = dy.offset + (n * g.k() + gr * g.kg()) * ohw;
          gemm(true, false, ckk, ohw, g.kg(), 1f, w.f, w.offset + gr * g.kg() * ckk, ckk, dy.f, yo, ohw, 0f, dx.f,
              xo, ohw);
        }
      }
      return;
    }
    java.util.Arrays.fill(dx.f, dx.offset, dx.offset + dx.size(), 0f);
    int chunk = g.chunk(colCap);
    float[] c = colScratch(ckk * chunk * ohw);
    float[] m = chunk > 1 ? tmpScratch(g.kg() * chunk * ohw) : null;
    for (int n0 = 0; n0 < g.n(); n0 += chunk) {
      int nb = Math.min(chunk, g.n() - n0);
      int ld = nb * ohw;
      for (int gr = 0; gr < g.groups(); gr++) {
        int wo = w.offset + gr * g.kg() * ckk;
        // dcol (ckk, ld) = W_g^T (ckk, kg) dy_g (kg, ld)
        if (nb == 1) {
          gemm(true, false, ckk, ohw, g.kg(), 1f, w.f, wo, ckk, dy.f, dy.offset + (n0 * g.k() + gr * g.kg()) * ohw,
              ohw, 0f, c, 0, ohw);
        } else {
          exchange(m, g, dy.f, dy.offset, n0, nb, gr, true);
          gemm(true, false, ckk, ld, g.kg(), 1f, w.f, wo, ckk, m, 0, ld, 0f, c, 0, ld);
        }
        for (int s = 0; s < nb; s++) {
          col2im(c, ld, s * ohw, g, dx.f, dx.offset + ((n0 + s) * g.c() + gr * g.cg()) * hw);
        }
      }
    }
  }

  void conv2dBackwardFilter(CpuTensor x, CpuTensor dy, CpuTensor dw, CpuTensor dbias, Conv2dDesc d) {
    Geo g = geo(x.shape(), dw.shape(), dy.shape(), d);
    int ckk = g.ckk();
    int ohw = g.ohw();
    int hw = g.h() * g.w();
    if (g.direct()) {
      for (int n = 0; n < g.n(); n++) {
        for (int gr = 0; gr < g.groups(); gr++) {
          // dW_g (kg, cg) += dy_g (kg, hw) x_g^T (hw, cg)
          int xo = x.offset + (n * g.c() + gr * g.cg()) * hw;
          int yo = dy.offset + (n * g.k() + gr * g.kg()) * ohw;
          gemm(false, true, g.kg(), ckk, ohw, 1f, dy.f, yo, ohw, x.f, xo, ohw, 1f, dw.f,
              dw.offset + gr * g.kg() * ckk, ckk);
        }
      }
    } else {
      int chunk = g.chunk(colCap);
      float[] c = colScratch(ckk * chunk * ohw);
      float[] m = chunk > 1 ? tmpScratch(g.kg() * chunk * ohw) : null;
      for (int n0 = 0; n0 < g.n(); n0 += chunk) {
        int nb = Math.min(chunk, g.n() - n0);
        int ld = nb * ohw;
        for (int gr = 0; gr < g.groups(); gr++) {
          for (int s = 0; s < nb; s++) {
            im2col(x.f, x.offset + ((n0 + s) * g.c() + gr * g.cg()) * hw, g, c, ld, s * ohw);
          }
          // dW_g (kg, ckk) += dy_g (kg, ld) col^T (ld, ckk)
          float[] dyM = dy.f;
          int dyo = dy.offset + (n0 * g.k() + gr * g.kg()) * ohw;
          if (nb > 1) {
            exchange(m, g, dy.f, dy.offset, n0, nb, gr, true);
            dyM = m;
            dyo = 0;
          }
          gemm(false, true, g.kg(), ckk, ld, 1f, dyM, dyo, ld, c, 0, ld, 1f, dw.f, dw.offset + gr * g.kg() * ckk,
              ckk);
        }
      }
    }
    if (dbias != null) {
      for (int k = 0; k < g.k(); k++) {
        double s = 0;
        for (int n = 0; n < g.n(); n++) {
          int yo = dy.offset + (n * g.k() + k) * ohw;
          for (int p = 0; p < ohw; p++) {
            s += dy.f[yo + p];
          }
        }
        dbias.f[dbias.offset + k] += (float) s;
      }
    }
  }

  // ---- pooling ----

  /** Index (into x.f) of the first maximum of window (p, q) of plane xo; NaN wins (it propagates). */
  private static int argmaxWindow(float[] x, int xo, int h, int w, int p, int q, Pool2dDesc d) {
    int hs = p * d.strideH() - d.padH();
    int ws = q * d.strideW() - d.padW();
    int he = Math.min(hs + d.kernelH(), h);
    int we = Math.min(ws + d.kernelW(), w);
    hs = Math.max(hs, 0);
    ws = Math.max(ws, 0);
    int best = xo + hs * w + ws;
    float m = x[best];
    for (int i = hs; i < he; i++) {
      for (int j = ws; j < we; j++) {
        int idx = xo + i * w + j;
        float v = x[idx];
        if (v > m || (v != v && m == m)) {
          m = v;
          best = idx;
        }
      }
    }
    return best;
  }

  /** 2x2 windows with stride 2 and no padding (the common case): index of the first maximum. */
  private static boolean is2x2(Pool2dDesc d) {
    return d.kernelH() == 2 && d.kernelW() == 2 && d.strideH() == 2 && d.strideW() == 2 && d.padH() == 0
        && d.padW() == 0;
  }

  private static int argmax2x2(float[] x, int i, int w) {
    int best = pick(x, i, i + 1);
    best = pick(x, best, i + w);
    return pick(x, best, i + w + 1);
  }

  /** best, or idx when x[idx] is larger (or the first NaN): the first maximum wins, NaN propagates. */
  private static int pick(float[] x, int best, int idx) {
    float m = x[best];
    float v = x[idx];
    return v > m || (v != v && m == m) ? idx : best;
  }

  static void maxPool2dForward(CpuTensor x, CpuTensor y, Pool2dDesc d) {
    int planes = x.dim(0) * x.dim(1);
    int h = x.dim(2);
    int w = x.dim(3);
    int oh = y.dim(2);
    int ow = y.dim(3);
    if (is2x2(d)) {
      for (int pl = 0; pl < planes; pl++) {
        int xo = x.offset + pl * h * w;
        int yo = y.offset + pl * oh * ow;
        for (int p = 0; p < oh; p++) {
          for (int q = 0; q < ow; q++) {
            y.f[yo + p * ow + q] = x.f[argmax2x2(x.f, xo + 2 * p * w + 2 * q, w)];
          }
        }
      }
      return;
    }
    for (int pl = 0; pl < planes; pl++) {
      int xo = x.offset + pl * h * w;
      int yo = y.offset + pl * oh * ow;
      for (int p = 0; p < oh; p++) {
        for (int q = 0; q < ow; q++) {
          y.f[yo + p * ow + q] = x.f[argmaxWindow(x.f, xo, h, w, p, q, d)];
        }
      }
    }
  }

  static void maxPool2dBackward(CpuTensor x, CpuTensor dy, CpuTensor dx, Pool2dDesc d) {
    int planes = x.dim(0) * x.dim(1);
    int h = x.dim(2);
    int w = x.dim(3);
    int oh = dy.dim(2);
    int ow = dy.dim(3);
    java.util.Arrays.fill(dx.f, dx.offset, dx.offset + dx.size(), 0f);
    int shift = dx.offset - x.offset;
    if (is2x2(d)) {
      for (int pl = 0; pl < planes; pl++) {
        int xo = x.offset + pl * h * w;
        int yo = dy.offset + pl * oh * ow;
        for (int p = 0; p < oh; p++) {
          for (int q = 0; q < ow; q++) {
            dx.f[argmax2x2(x.f, xo + 2 * p * w + 2 * q, w) + shift] += dy.f[yo + p * ow + q];
          }
        }
      }
      return;
    }
    for (int pl = 0; pl < planes; pl++) {
      int xo = x.offset + pl * h * w;
      int yo = dy.offset + pl * oh * ow;
      for (int p = 0; p < oh; p++) {
        for (int q = 0; q < ow; q++) {
          dx.f[argmaxWindow(x.f, xo, h, w, p, q, d) + shift] += dy.f[yo + p * ow + q];
        }
      }
    }
  }

  static void avgPool2dForward(CpuTensor x, CpuTensor y, Pool2dDesc d) {
    int planes = x.dim(0) * x.dim(1);
    int h = x.dim(2);
    int w = x.dim(3);
    int oh = y.dim(2);
    int ow = y.dim(3);
    float inv = 1f / (d.kernelH() * d.kernelW());
    for (int pl = 0; pl < planes; pl++) {
      int xo = x.offset + pl * h * w;
      int yo = y.offset + pl * oh * ow;
      for (int p = 0; p < oh; p++) {
        int hs = Math.max(p * d.strideH() - d.padH(), 0);
        int he = Math.min(p * d.strideH() - d.padH() + d.kernelH(), h);
        for (int q = 0; q < ow; q++) {
          int ws = Math.max(q * d.strideW() - d.padW(), 0);
          int we = Math.min(q * d.strideW() - d.padW() + d.kernelW(), w);
          float s = 0;
          for (int i = hs; i < he; i++) {
            for (int j = ws; j < we; j++) {
              s += x.f[xo + i * w + j];
            }
          }
          y.f[yo + p * ow + q] = s * inv;
        }
      }
    }
  }

  static void avgPool2dBackward(CpuTensor dy, CpuTensor dx, Pool2dDesc d) {
    int planes = dx.dim(0) * dx.dim(1);
    int h = dx.dim(2);
    int w = dx.dim(3);
    int oh = dy.dim(2);
    int ow = dy.dim(3);
    float inv = 1f / (d.kernelH() * d.kernelW());
    java.util.Arrays.fill(dx.f, dx.offset, dx.offset + dx.size(), 0f);
    for (int pl = 0; pl < planes; pl++) {
      int xo = dx.offset + pl * h * w;
      int yo = dy.offset + pl * oh * ow;
      for (int p = 0; p < oh; p++) {
        int hs = Math.max(p * d.strideH() - d.padH(), 0);
        int he = Math.min(p * d.strideH() - d.padH() + d.kernelH(), h);
        for (int q = 0; q < ow; q++) {
          int ws = Math.max(q * d.strideW() - d.padW(), 0);
          int we = Math.min(q * d.strideW() - d.padW() + d.kernelW(), w);
          float g = dy.f[yo + p * ow + q] * inv;
          for (int i = hs; i < he; i++) {
            for (int j = ws; j < we; j++) {
              dx.f[xo + i * w + j] += g;
            }
          }
        }
      }
    }
  }

  // ---- batch normalisation: x (N, C, spatial...), statistics per channel over N * spatial values ----
  // The per-channel passes below serve both the per-rank ops and the synchronised ones (Device's SyncBatchNorm
  // ops split them where the layer all-reduces the per-channel sums); the GPU kernels (bn_sync.cuh) mirror
  // them. x, y, dy, dx of the synchronised ops are FLOAT32 or BFLOAT16 (bf16 values held rounded; results
  // rounded once when stored); the per-rank ops take FLOAT32 only, where storing rounds nothing.

  /** Values per channel and sample (the product of the spatial dims). */
  private static int spatial(CpuTensor x) {
    return x.size() / Math.max(1, x.dim(0) * x.dim(1));
  }

  private static float out(CpuTensor t, float v) {
    return t.dtype() == DType.BFLOAT16 ? CpuDevice.roundBf16(v) : v;
  }

  /** y[:, ch, :] = (x - mean) * inv * gm + bt. */
  private static void normalize(CpuTensor x, CpuTensor y, int ch, float mean, float inv, float gm, float bt) {
    int n = x.dim(0);
    int c = x.dim(1);
    int s = spatial(x);
    for (int b = 0; b < n; b++) {
      int o = (b * c + ch) * s;
      for (int j = 0; j < s; j++) {
        y.f[y.offset + o + j] = out(y, (x.f[x.offset + o + j] - mean) * inv * gm + bt);
      }
    }
  }

  /** {sum dy, sum dy * xhat} over channel ch, xhat = (x - mean) * inv, summed in double. */
  private static double[] gradientSums(CpuTensor x, CpuTensor dy, int ch, float mean, float inv) {
    int n = x.dim(0);
    int c = x.dim(1);
    int s = spatial(x);
    double sdy = 0;
    double sdyxh = 0;
    for (int b = 0; b < n; b++) {
      int o = (b * c + ch) * s;
      for (int j = 0; j < s; j++) {
        float g = dy.f[dy.offset + o + j];
        sdy += g;
        sdyxh += g * ((x.f[x.offset + o + j] - mean) * inv);
      }
    }
    return new double[] {sdy, sdyxh};
  }

  /** dx[:, ch, :] = gamma * inv / M * (M dy - sumDy - xhat * sumDyXhat), M = count. */
  private static void gradientApply(CpuTensor x, CpuTensor dy, CpuTensor dx, int ch, float mean, float inv,
      float gamma, float count, float sumDy, float sumDyXhat) {
    int n = x.dim(0);
    int c = x.dim(1);
    int s = spatial(x);
    float k = gamma * inv / count;
    for (int b = 0; b < n; b++) {
      int o = (b * c + ch) * s;
      for (int j = 0; j < s; j++) {
        float xh = (x.f[x.offset + o + j] - mean) * inv;
        dx.f[dx.offset + o + j] = out(dx, k * (count * dy.f[dy.offset + o + j] - sumDy - xh * sumDyXhat));
      }
    }
  }

  static void batchNormForwardTraining(CpuTensor x, CpuTensor gamma, CpuTensor beta, CpuTensor y,
      CpuTensor runningMean, CpuTensor runningVar, float momentum, float eps, CpuTensor saveMean,
      CpuTensor saveInvStd) {
    int n = x.dim(0);
    int c = x.dim(1);
    int s = spatial(x);
    long m = (long) n * s;
    for (int ch = 0; ch < c; ch++) {
      double sum = 0;
      for (int b = 0; b < n; b++) {
        int o = x.offset + (b * c + ch) * s;
        for (int j = 0; j < s; j++) {
          sum += x.f[o + j];
        }
      }
      double mean = sum / m;
      double sq = 0;
      for (int b = 0; b < n; b++) {
        int o = x.offset + (b * c + ch) * s;
        for (int j = 0; j < s; j++) {
          double dv = x.f[o + j] - mean;
          sq += dv * dv;
        }
      }
      double var = sq / m;
      float meanF = (float) mean;
      float inv = (float) (1.0 / Math.sqrt(var + eps));
      normalize(x, y, ch, meanF, inv, gamma.f[gamma.offset + ch], beta.f[beta.offset + ch]);
      saveMean.f[saveMean.offset + ch] = meanF;
      saveInvStd.f[saveInvStd.offset + ch] = inv;
      int r = runningMean.offset + ch;
      runningMean.f[r] = (float) ((1.0 - momentum) * runningMean.f[r] + momentum * mean);
      r = runningVar.offset + ch;
      runningVar.f[r] = (float) ((1.0 - momentum) * runningVar.f[r] + momentum * var * m / (m - 1));
    }
  }

  static void batchNormForwardInference(CpuTensor x, CpuTensor gamma, CpuTensor beta, CpuTensor runningMean,
      CpuTensor runningVar, float eps, CpuTensor y) {
    for (int ch = 0; ch < x.dim(1); ch++) {
      float inv = (float) (1.0 / Math.sqrt(runningVar.f[runningVar.offset + ch] + (double) eps));
      normalize(x, y, ch, runningMean.f[runningMean.offset + ch], inv, gamma.f[gamma.offset + ch],
          beta.f[beta.offset + ch]);
    }
  }

  static void batchNormBackward(CpuTensor x, CpuTensor dy, CpuTensor gamma, CpuTensor saveMean,
      CpuTensor saveInvStd, CpuTensor dx, CpuTensor dgamma, CpuTensor dbeta) {
    float m = (long) x.dim(0) * spatial(x);
    for (int ch = 0; ch < x.dim(1); ch++) {
      float mean = saveMean.f[saveMean.offset + ch];
      float inv = saveInvStd.f[saveInvStd.offset + ch];
      double[] sums = gradientSums(x, dy, ch, mean, inv);
      dbeta.f[dbeta.offset + ch] += (float) sums[0];
      dgamma.f[dgamma.offset + ch] += (float) sums[1];
      gradientApply(x, dy, dx, ch, mean, inv, gamma.f[gamma.offset + ch], m, (float) sums[0], (float) sums[1]);
    }
  }

  static void batchNormStats(CpuTensor x, CpuTensor stats) {
    int n = x.dim(0);
    int c = x.dim(1);
    int s = spatial(x);
    for (int ch = 0; ch < c; ch++) {
      double sum = 0;
      double sq = 0;
      for (int b = 0; b < n; b++) {
        int o = x.offset + (b * c + ch) * s;
        for (int j = 0; j < s; j++) {
          double v = x.f[o + j];
          sum += v;
          sq += v * v;
        }
      }
      stats.f[stats.offset + ch] = (float) sum;
      stats.f[stats.offset + c + ch] = (float) sq;
    }
  }

  static void batchNormFinalizeStats(CpuTensor stats, long count, float momentum, float eps, CpuTensor mean,
      CpuTensor invStd, CpuTensor runningMean, CpuTensor runningVar) {
    int c = mean.size();
    for (int ch = 0; ch < c; ch++) {
      double mu = stats.f[stats.offset + ch] / (double) count;
      double var = stats.f[stats.offset + c + ch] / (double) count - mu * mu;
      if (var < 0) {
        var = 0; // one-pass variance: rounding can leave a tiny negative value
      }
      mean.f[mean.offset + ch] = (float) mu;
      invStd.f[invStd.offset + ch] = (float) (1.0 / Math.sqrt(var + eps));
      if (runningMean != null) {
        int r = runningMean.offset + ch;
        runningMean.f[r] = (float) ((1.0 - momentum) * runningMean.f[r] + momentum * mu);
        r = runningVar.offset + ch;
        runningVar.f[r] = (float) ((1.0 - momentum) * runningVar.f[r]
            + momentum * var * (double) count / (double) (count - 1));
      }
    }
  }

  static void batchNormApply(CpuTensor x, CpuTensor gamma, CpuTensor beta, CpuTensor mean, CpuTensor invStd,
      CpuTensor y) {
    for (int ch = 0; ch < x.dim(1); ch++) {
      normalize(x, y, ch, mean.f[mean.offset + ch], invStd.f[invStd.offset + ch], gamma.f[gamma.offset + ch],
          beta.f[beta.offset + ch]);
    }
  }

  static void batchNormBackwardReduce(CpuTensor x, CpuTensor dy, CpuTensor mean, CpuTensor invStd,
      CpuTensor sums) {
    int c = x.dim(1);
    for (int ch = 0; ch < c; ch++) {
      double[] g = gradientSums(x, dy, ch, mean.f[mean.offset + ch], invStd.f[invStd.offset + ch]);
      sums.f[sums.offset + ch] = (float) g[0];
      sums.f[sums.offset + c + ch] = (float) g[1];
    }
  }

  static void batchNormBackwardApply(CpuTensor x, CpuTensor dy, CpuTensor gamma, CpuTensor mean,
      CpuTensor invStd, CpuTensor sums, long count, CpuTensor dx) {
    int c = x.dim(1);
    for (int ch = 0; ch < c; ch++) {
      gradientApply(x, dy, dx, ch, mean.f[mean.offset + ch], invStd.f[invStd.offset + ch],
          gamma.f[gamma.offset + ch], count, sums.f[sums.offset + ch], sums.f[sums.offset + c + ch]);
    }
  }
}
