package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.BF16_TOL;
import static dev.sparktrainer.cuda.CudaTestSupport.FP32_TOL;
import static dev.sparktrainer.cuda.CudaTestSupport.assertClose;
import static dev.sparktrainer.cuda.CudaTestSupport.assertCloseNormwise;
import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static dev.sparktrainer.cuda.CudaTestSupport.hostInts;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Every op of {@link CudaDevice} against {@link CpuDevice} on random inputs, odd sizes included. fp32:
 * relative error <= 1e-5 (elementwise ops, optimizers and bias sums are expected bit-exact); bf16 <= 1e-2.
 */
class CudaOpsTest {
  static final int[] SIZES = {1, 7, 255, 1000, 4099, 65537, 1 << 20};
  static CudaDevice gpu;
  static CpuDevice cpu;

  /** Per test, so that each one is reported as skipped (with the reason) on a machine without a GPU. */
  @BeforeEach
  void open() {
    CudaTestSupport.assumeGpu();
    if (gpu == null) {
      gpu = new CudaDevice(0);
      cpu = new CpuDevice();
      CudaTestLog.note("# CudaOpsTest on " + Cuda.deviceName(0) + ", matmul backend " + gpu.matmulBackend()
          + ", kernels from " + NativeLoader.kernelSource() + ", JNI from " + NativeLoader.jniSource());
    }
  }

  @AfterAll
  static void close() {
    if (gpu != null) {
      gpu.close();
    }
  }

  static float[] rand(int n, long seed, double scale) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] a = new float[n];
    for (int i = 0; i < n; i++) {
      a[i] = (float) ((r.nextDouble() * 2 - 1) * scale);
    }
    return a;
  }

  /** The same host data as a tensor on each device. */
  static Tensor[] pair(DType dt, float[] data, int... shape) {
    Tensor c = cpu.allocate(dt, shape);
    Tensor g = gpu.allocate(dt, shape);
    cpu.upload(data, 0, c);
    gpu.upload(data, 0, g);
    return new Tensor[] {c, g};
  }

  static void same(Tensor[] p, double tol, String what) {
    assertClose(host(cpu, p[0]), host(gpu, p[1]), tol, what);
  }

  // ---------------------------------------------------------------- transfers, fill, copy

  @Test
  void uploadDownloadRoundTripsAllDtypes() {
    for (int n : SIZES) {
      float[] a = rand(n, n, 100);
      Tensor g = gpu.allocate(DType.FLOAT32, n);
      gpu.upload(a, 0, g);
      assertArrayEquals(a, host(gpu, g), "float32 round trip, n=" + n);
      int[] ints = new int[n];
      for (int i = 0; i < n; i++) {
        ints[i] = i * 31 - 7;
      }
      Tensor gi = gpu.allocate(DType.INT32, n);
      gpu.upload(ints, 0, gi);
      assertArrayEquals(ints, hostInts(gpu, gi), "int32 round trip, n=" + n);
      Tensor gb = gpu.allocate(DType.BFLOAT16, n);
      gpu.upload(a, 0, gb);
      float[] back = host(gpu, gb);
      for (int i = 0; i < n; i++) {
        assertEquals(CpuDevice.roundBf16(a[i]), back[i], 0f, "bf16 rounding at " + i);
      }
    }
    // 20 MiB: more than the two pinned staging buffers together
    float[] big = rand(5 << 20, 3, 1);
    Tensor g = gpu.allocate(DType.FLOAT32, big.length);
    gpu.upload(big, 0, g);
    assertArrayEquals(big, host(gpu, g));
  }

  @Test
  void byteBufferUploadAndSourceOffsets() {
    int n = 1001;
    ByteBuffer b = ByteBuffer.allocateDirect(4 * n + 8).order(ByteOrder.LITTLE_ENDIAN);
    b.putInt(0xdead);
    b.putInt(0xbeef);
    for (int i = 0; i < n; i++) {
      b.putFloat(i * 0.5f);
    }
    b.position(8);
    Tensor g = gpu.allocate(DType.FLOAT32, n);
    gpu.upload(b, g);
    assertEquals(8, b.position(), "position must not move");
    float[] out = host(gpu, g);
    assertEquals(0.5f * 1000, out[1000], 0f);
    Tensor bf = gpu.allocate(DType.BFLOAT16, 3);
    ByteBuffer raw = ByteBuffer.allocate(6).order(ByteOrder.LITTLE_ENDIAN);
    raw.putShort((short) 0x3f80).putShort((short) 0xc000).putShort((short) 0x4049).flip();
    gpu.upload(raw, bf);
    assertArrayEquals(new float[] {1f, -2f, 3.140625f}, host(gpu, bf));
    float[] src = rand(50, 1, 1);
    Tensor part = gpu.allocate(DType.FLOAT32, 20);
    gpu.upload(src, 30, part);
    float[] dst = new float[25];
    gpu.download(part, dst, 5);
    for (int i = 0; i < 20; i++) {
      assertEquals(src[30 + i], dst[5 + i], 0f);
    }
    assertThrows(IndexOutOfBoundsException.class, () -> gpu.upload(src, 40, part));
  }

  @Test
  void fillCopyAndCasts() {
    for (int n : SIZES) {
      float[] a = rand(n, 11 + n, 50);
      for (DType dt : new DType[] {DType.FLOAT32, DType.BFLOAT16}) {
        Tensor[] x = pair(dt, a, n);
        cpu.fill(x[0], 1.2345f);
        gpu.fill(x[1], 1.2345f);
        same(x, 0, "fill " + dt + " n=" + n);
        cpu.fill(x[0], 0f);
        gpu.fill(x[1], 0f);
        same(x, 0, "fill 0 " + dt + " n=" + n);
      }
      Tensor[] f = pair(DType.FLOAT32, a, n);
      Tensor[] b = pair(DType.BFLOAT16, new float[n], n);
      cpu.copy(f[0], b[0]);
      gpu.copy(f[1], b[1]);
      same(b, 0, "cast fp32->bf16 (bit-exact rounding) n=" + n);
      Tensor[] f2 = pair(DType.FLOAT32, new float[n], n);
      cpu.copy(b[0], f2[0]);
      gpu.copy(b[1], f2[1]);
      same(f2, 0, "cast bf16->fp32 n=" + n);
      Tensor[] f3 = pair(DType.FLOAT32, new float[n], n);
      cpu.copy(f[0], f3[0]);
      gpu.copy(f[1], f3[1]);
      same(f3, 0, "copy fp32 n=" + n);
    }
    Tensor gi = gpu.allocate(DType.INT32, 9);
    gpu.fill(gi, 7f);
    assertArrayEquals(new int[] {7, 7, 7, 7, 7, 7, 7, 7, 7}, hostInts(gpu, gi));
    Tensor gi2 = gpu.allocate(DType.INT32, 9);
    gpu.copy(gi, gi2);
    assertArrayEquals(hostInts(gpu, gi), hostInts(gpu, gi2));
    assertThrows(IllegalArgumentException.class, () -> gpu.copy(gi, gpu.allocate(DType.FLOAT32, 9)));
  }

  @Test
  void axpyScaleAndReductions() {
    for (int n : SIZES) {
      float[] a = rand(n, 21 + n, 3);
      float[] b = rand(n, 22 + n, 3);
      for (DType dt : new DType[] {DType.FLOAT32, DType.BFLOAT16}) {
        double tol = dt == DType.FLOAT32 ? FP32_TOL : BF16_TOL;
        Tensor[] x = pair(dt, a, n);
        Tensor[] y = pair(dt, b, n);
        cpu.axpy(-0.75f, x[0], y[0]);
        gpu.axpy(-0.75f, x[1], y[1]);
        same(y, tol, "axpy " + dt + " n=" + n);
        cpu.scale(y[0], 1.5f);
        gpu.scale(y[1], 1.5f);
        same(y, tol, "scale " + dt + " n=" + n);
        double cs = cpu.sum(y[0]);
        double gs = gpu.sum(y[1]);
        double cq = cpu.sumSquares(y[0]);
        double gq = gpu.sumSquares(y[1]);
        double scaleAbs = cpu.sumSquares(y[0]) > 0 ? Math.sqrt(cq * n) : 1; // |sum| <= sqrt(n * sumsq)
        CudaTestLog.record("sum " + dt + " n=" + n + " (rel. to sqrt(n*sumsq))", Math.abs(cs - gs) / scaleAbs, 1e-12);
        assertEquals(cs, gs, 1e-12 * scaleAbs, "sum " + dt + " n=" + n);
        assertEquals(cq, gq, 1e-12 * cq, "sumSquares " + dt + " n=" + n);
      }
      Tensor[] x = pair(DType.FLOAT32, a, n);
      Tensor[] acc = pair(DType.FLOAT32, new float[] {2.5f}, 1);
      cpu.sumInto(x[0], acc[0]);
      gpu.sumInto(x[1], acc[1]);
      cpu.sumInto(x[0], acc[0]);
      gpu.sumInto(x[1], acc[1]);
      same(acc, FP32_TOL, "sumInto n=" + n);
    }
    Tensor gi = gpu.allocate(DType.INT32, 1000);
    int[] ints = new int[1000];
    for (int i = 0; i < ints.length; i++) {
      ints[i] = i - 300;
    }
    gpu.upload(ints, 0, gi);
    assertEquals(1000 * 999 / 2 - 300 * 1000, gpu.sum(gi), 0);
  }

  @Test
  void scaleAndCheckFiniteFindsInfAndNaN() {
    Tensor g = gpu.allocate(DType.FLOAT32, 100_001);
    gpu.upload(rand(100_001, 5, 1), 0, g);
    assertTrue(gpu.scaleAndCheckFinite(g, 0.5f));
    float[] h = host(gpu, g);
    h[77_777] = Float.POSITIVE_INFINITY;
    gpu.upload(h, 0, g);
    assertFalse(gpu.scaleAndCheckFinite(g, 1f));
    h[77_777] = Float.NaN;
    gpu.upload(h, 0, g);
    assertFalse(gpu.scaleAndCheckFinite(g, 1f));
    h[77_777] = 3e38f;
    gpu.upload(h, 0, g);
    assertFalse(gpu.scaleAndCheckFinite(g, 10f), "overflow to Inf by the scaling itself");
  }

  // ---------------------------------------------------------------- matmul

  static void checkMatmul(int m, int k, int n, boolean ta, boolean tb, DType dt, float alpha, float beta,
      boolean reference) {
    int[] as = ta ? new int[] {k, m} : new int[] {m, k};
    int[] bs = tb ? new int[] {n, k} : new int[] {k, n};
    long seed = m * 31L + k * 7L + n + (ta ? 1 : 0) + (tb ? 2 : 0);
    Tensor[] a = pair(dt, rand(m * k, seed, 1), as);
    Tensor[] b = pair(dt, rand(k * n, seed + 1, 1), bs);
    Tensor[] c = pair(DType.FLOAT32, rand(m * n, seed + 2, 1), m, n);
    cpu.matmul(a[0], ta, b[0], tb, c[0], alpha, beta);
    if (reference) {
      gpu.matmulReference(a[1], ta, b[1], tb, c[1], alpha, beta);
    } else {
      gpu.matmul(a[1], ta, b[1], tb, c[1], alpha, beta);
    }
    String what = (reference ? "matmul reference " : "matmul ") + dt + " " + m + "x" + k + "x" + n + " tA=" + ta
        + " tB=" + tb + " a=" + alpha + " b=" + beta;
    assertCloseNormwise(host(cpu, c[0]), host(gpu, c[1]), dt == DType.FLOAT32 ? FP32_TOL : BF16_TOL, what);
  }

  @Test
  void matmulAllTransposesOddShapesFp32() {
    CudaTestSupport.assumeJni();
    int[][] shapes = {{1, 1, 1}, {33, 65, 17}, {128, 784, 256}, {127, 129, 10}, {5, 1000, 3}};
    for (int[] s : shapes) {
      for (boolean ta : new boolean[] {false, true}) {
        for (boolean tb : new boolean[] {false, true}) {
          checkMatmul(s[0], s[1], s[2], ta, tb, DType.FLOAT32, 1f, 0f, false);
        }
      }
    }
    checkMatmul(64, 32, 48, false, true, DType.FLOAT32, 0.5f, 1f, false); // accumulate, as dW += dy^T x
    checkMatmul(64, 32, 48, true, false, DType.FLOAT32, -2f, 0.25f, false);
  }

  @Test
  void matmulBf16InputsWithFp32Accumulation() {
    CudaTestSupport.assumeJni();
    for (boolean ta : new boolean[] {false, true}) {
      for (boolean tb : new boolean[] {false, true}) {
        checkMatmul(128, 784, 256, ta, tb, DType.BFLOAT16, 1f, 0f, false);
        checkMatmul(33, 65, 17, ta, tb, DType.BFLOAT16, 1f, 1f, false);
      }
    }
    // bf16 output
    Tensor[] a = pair(DType.BFLOAT16, rand(64 * 96, 1, 1), 64, 96);
    Tensor[] b = pair(DType.BFLOAT16, rand(96 * 40, 2, 1), 96, 40);
    Tensor[] c = pair(DType.BFLOAT16, new float[64 * 40], 64, 40);
    cpu.matmul(a[0], false, b[0], false, c[0], 1f, 0f);
    gpu.matmul(a[1], false, b[1], false, c[1], 1f, 0f);
    assertCloseNormwise(host(cpu, c[0]), host(gpu, c[1]), BF16_TOL, "matmul bf16 -> bf16 64x96x40");
  }

  @Test
  void referenceGemmMatchesCpuAndCublasLt() {
    checkMatmul(33, 65, 17, false, false, DType.FLOAT32, 1f, 0f, true);
    checkMatmul(33, 65, 17, true, true, DType.FLOAT32, 0.5f, 2f, true);
    checkMatmul(16, 20, 8, true, false, DType.BFLOAT16, 1f, 0f, true);
  }

  @Test
  void linearForwardEpiloguesMatchMatmulBiasRelu() {
    CudaTestSupport.assumeJni();
    int nb = 37;
    int in = 129;
    int out = 65;
    Tensor[] x = pair(DType.FLOAT32, rand(nb * in, 1, 1), nb, in);
    Tensor[] w = pair(DType.FLOAT32, rand(out * in, 2, 0.1), out, in);
    Tensor[] bias = pair(DType.FLOAT32, rand(out, 3, 0.5), out);
    for (boolean relu : new boolean[] {false, true}) {
      Tensor[] y = pair(DType.FLOAT32, new float[nb * out], nb, out);
      cpu.matmul(x[0], false, w[0], true, y[0], 1f, 0f);
      cpu.addBias(y[0], bias[0]);
      if (relu) {
        cpu.relu(y[0], y[0]);
      }
      gpu.linearForward(x[1], w[1], bias[1], relu, y[1]);
      assertCloseNormwise(host(cpu, y[0]), host(gpu, y[1]), FP32_TOL, "linearForward bias" + (relu ? "+relu" : ""));
    }
  }

  @Test
  void matmulRejectsBadShapes() {
    Tensor a = gpu.allocate(DType.FLOAT32, 3, 4);
    Tensor b = gpu.allocate(DType.FLOAT32, 5, 6);
    Tensor c = gpu.allocate(DType.FLOAT32, 3, 6);
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> gpu.matmul(a, false, b, false, c, 1f, 0f));
    assertTrue(e.getMessage().contains("do not agree"), e.getMessage());
  }

  // ---------------------------------------------------------------- bias, activations, dropout

  @Test
  void biasAddAndBiasGrad() {
    int[][] shapes = {{1, 1}, {3, 7}, {128, 256}, {1001, 10}, {4, 4099}};
    for (int[] s : shapes) {
      int rows = s[0];
      int cols = s[1];
      Tensor[] y = pair(DType.FLOAT32, rand(rows * cols, rows, 2), rows, cols);
      Tensor[] b = pair(DType.FLOAT32, rand(cols, cols, 1), cols);
      cpu.addBias(y[0], b[0]);
      gpu.addBias(y[1], b[1]);
      same(y, 0, "addBias " + rows + "x" + cols + " (bit-exact)");
      Tensor[] db = pair(DType.FLOAT32, rand(cols, 99, 1), cols);
      cpu.biasGrad(y[0], db[0]);
      gpu.biasGrad(y[1], db[1]);
      same(db, 0, "biasGrad " + rows + "x" + cols + " (bit-exact: rows summed in order)");
    }
  }

  @Test
  void activationsAndTheirBackward() {
    for (int n : SIZES) {
      float[] xs = rand(n, 31 + n, 4);
      float[] gs = rand(n, 32 + n, 1);
      for (DType dt : new DType[] {DType.FLOAT32, DType.BFLOAT16}) {
        double tol = dt == DType.FLOAT32 ? FP32_TOL : BF16_TOL;
        Tensor[] x = pair(dt, xs, n);
        Tensor[] dy = pair(dt, gs, n);
        Tensor[] y = pair(dt, new float[n], n);
        Tensor[] dx = pair(dt, new float[n], n);
        cpu.relu(x[0], y[0]);
        gpu.relu(x[1], y[1]);
        same(y, tol, "relu " + dt + " n=" + n);
        cpu.reluBackward(x[0], dy[0], dx[0]);
        gpu.reluBackward(x[1], dy[1], dx[1]);
        same(dx, tol, "reluBackward " + dt + " n=" + n);
        cpu.gelu(x[0], y[0]);
        gpu.gelu(x[1], y[1]);
        same(y, tol, "gelu " + dt + " n=" + n);
        cpu.geluBackward(x[0], dy[0], dx[0]);
        gpu.geluBackward(x[1], dy[1], dx[1]);
        same(dx, tol, "geluBackward " + dt + " n=" + n);
      }
    }
  }

  @Test
  void dropoutMaskIsBitIdenticalToTheCpuRng() {
    for (int n : SIZES) {
      float[] xs = rand(n, 41 + n, 3);
      for (float p : new float[] {0.1f, 0.5f, 0.9f}) {
        for (long[] so : new long[][] {{7, 0}, {-123456789L, 1L << 40}, {Long.MIN_VALUE, 5}}) {
          Tensor[] x = pair(DType.FLOAT32, xs, n);
          Tensor[] y = pair(DType.FLOAT32, new float[n], n);
          cpu.dropout(x[0], y[0], p, so[0], so[1]);
          gpu.dropout(x[1], y[1], p, so[0], so[1]);
          assertArrayEquals(host(cpu, y[0]), host(gpu, y[1]), "dropout p=" + p + " seed=" + so[0] + " n=" + n);
          cpu.dropoutBackward(x[0], y[0], p, so[0], so[1]);
          gpu.dropoutBackward(x[1], y[1], p, so[0], so[1]);
          assertArrayEquals(host(cpu, y[0]), host(gpu, y[1]), "dropoutBackward p=" + p + " n=" + n);
        }
      }
    }
    CudaTestLog.record("dropout/dropoutBackward mask and values (bit-exact, 3 seeds x 3 p x 7 sizes)", 0, 0);
  }

  // ---------------------------------------------------------------- losses and row ops

  static int[] labels(int rows, int cols, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    int[] l = new int[rows];
    for (int i = 0; i < rows; i++) {
      l[i] = r.nextInt(cols);
    }
    return l;
  }

  static Tensor[] intPair(int[] data) {
    Tensor c = cpu.allocate(DType.INT32, data.length);
    Tensor g = gpu.allocate(DType.INT32, data.length);
    cpu.upload(data, 0, c);
    gpu.upload(data, 0, g);
    return new Tensor[] {c, g};
  }

  @Test
  void softmaxCrossEntropyFusedWithBackward() {
    int[][] shapes = {{1, 1}, {1, 10}, {128, 10}, {77, 33}, {16, 1000}, {5, 1024}, {5, 1025}, {3, 50000}};
    for (int[] s : shapes) {
      int rows = s[0];
      int cols = s[1];
      Tensor[] z = pair(DType.FLOAT32, rand(rows * cols, rows * 3L + cols, 5), rows, cols);
      Tensor[] y = intPair(labels(rows, cols, cols));
      Tensor[] loss = pair(DType.FLOAT32, new float[rows], rows);
      Tensor[] dz = pair(DType.FLOAT32, new float[rows * cols], rows, cols);
      cpu.softmaxCrossEntropy(z[0], y[0], loss[0], dz[0], 1f / 256);
      gpu.softmaxCrossEntropy(z[1], y[1], loss[1], dz[1], 1f / 256);
      same(loss, FP32_TOL, "softmaxCrossEntropy loss " + rows + "x" + cols);
      same(dz, FP32_TOL, "softmaxCrossEntropy dlogits " + rows + "x" + cols);
      gpu.softmaxCrossEntropy(z[1], y[1], loss[1], null, 1f);
      same(loss, FP32_TOL, "softmaxCrossEntropy loss only " + rows + "x" + cols);
      Tensor[] p = pair(DType.FLOAT32, new float[rows * cols], rows, cols);
      cpu.softmax(z[0], p[0]);
      gpu.softmax(z[1], p[1]);
      same(p, FP32_TOL, "softmax " + rows + "x" + cols);
    }
    // a label out of range gives NaN on the GPU (the CPU throws)
    Tensor z = gpu.allocate(DType.FLOAT32, 2, 3);
    Tensor y = gpu.allocate(DType.INT32, 2);
    gpu.upload(new int[] {1, 3}, 0, y);
    Tensor loss = gpu.allocate(DType.FLOAT32, 2);
    gpu.softmaxCrossEntropy(z, y, loss, null, 1f);
    float[] l = host(gpu, loss);
    assertEquals((float) Math.log(3), l[0], 1e-6f);
    assertTrue(Float.isNaN(l[1]));
  }

  @Test
  void mseWithAndWithoutGradient() {
    int[][] shapes = {{1, 1}, {128, 10}, {33, 784}, {1000, 3}};
    for (int[] s : shapes) {
      int rows = s[0];
      int cols = s[1];
      Tensor[] p = pair(DType.FLOAT32, rand(rows * cols, rows, 2), rows, cols);
      Tensor[] t = pair(DType.FLOAT32, rand(rows * cols, cols, 2), rows, cols);
      Tensor[] loss = pair(DType.FLOAT32, new float[rows], rows);
      Tensor[] d = pair(DType.FLOAT32, new float[rows * cols], rows, cols);
      cpu.mse(p[0], t[0], loss[0], d[0], 0.125f);
      gpu.mse(p[1], t[1], loss[1], d[1], 0.125f);
      same(loss, 0, "mse loss " + rows + "x" + cols + " (bit-exact)");
      same(d, 0, "mse dpred " + rows + "x" + cols + " (bit-exact)");
      gpu.mse(p[1], t[1], loss[1], null, 1f);
      same(loss, 0, "mse loss only " + rows + "x" + cols);
    }
  }

  @Test
  void argmaxAndCountCorrectFirstMaximumWins() {
    int[][] shapes = {{1, 1}, {128, 10}, {1001, 7}, {5, 3000}};
    for (int[] s : shapes) {
      int rows = s[0];
      int cols = s[1];
      float[] z = rand(rows * cols, rows + cols, 3);
      for (int r = 0; r < rows; r += 3) { // ties: the first maximum must win
        z[r * cols + cols - 1] = 10f;
        z[r * cols + cols / 2] = 10f;
      }
      Tensor[] zt = pair(DType.FLOAT32, z, rows, cols);
      Tensor[] y = intPair(labels(rows, cols, rows));
      Tensor[] am = intPair(new int[rows]);
      cpu.argmax(zt[0], am[0]);
      gpu.argmax(zt[1], am[1]);
      assertArrayEquals(hostInts(cpu, am[0]), hostInts(gpu, am[1]), "argmax " + rows + "x" + cols);
      int[] truth = hostInts(cpu, am[0]);
      cpu.upload(truth, 0, y[0]);
      gpu.upload(truth, 0, y[1]);
      Tensor[] correct = pair(DType.FLOAT32, new float[] {3f}, 1);
      cpu.countCorrect(zt[0], y[0], correct[0]);
      gpu.countCorrect(zt[1], y[1], correct[1]);
      same(correct, 0, "countCorrect " + rows + "x" + cols);
      assertEquals(3f + rows, host(gpu, correct[1])[0], 0f);
    }
    // The warp-per-row count (bf16 logits, as the fused path's): NaNs never win except as a row's first element,
    // and every other row's label is not its argmax.
    for (int[] s : new int[][] {{4096, 1000}, {33, 7}, {9, 2500}}) {
      int rows = s[0];
      int cols = s[1];
      float[] z = rand(rows * cols, rows * 7L + cols, 3);
      for (int r = 0; r < rows; r += 5) {
        z[r * cols + (r % cols)] = Float.NaN;
      }
      for (int r = 1; r < rows; r += 3) {
        z[r * cols + cols - 1] = 10f; // ties between the last column and the middle one
        z[r * cols + cols / 2] = 10f;
      }
      Tensor[] zt = pair(DType.BFLOAT16, z, rows, cols);
      Tensor[] am = intPair(new int[rows]);
      cpu.argmax(zt[0], am[0]);
      int[] labels = hostInts(cpu, am[0]);
      int expect = 0;
      for (int r = 0; r < rows; r++) {
        if (r % 2 == 1) {
          labels[r] = (labels[r] + 1) % cols;
        }
        expect += cols == 1 || r % 2 == 0 ? 1 : 0;
      }
      Tensor[] y = intPair(labels);
      Tensor[] correct = pair(DType.FLOAT32, new float[] {0f}, 1);
      cpu.countCorrect(zt[0], y[0], correct[0]);
      gpu.countCorrect(zt[1], y[1], correct[1]);
      same(correct, 0, "countCorrect with NaNs " + rows + "x" + cols);
      assertEquals(expect, host(gpu, correct[1])[0], 0f, "countCorrect with NaNs " + rows + "x" + cols);
    }
  }

  // ---------------------------------------------------------------- optimizers

  @Test
  void fusedSgdMatchesCpu() {
    for (int n : new int[] {1, 1000, 65537}) {
      for (float momentum : new float[] {0f, 0.9f}) {
        for (boolean nesterov : momentum == 0f ? new boolean[] {false} : new boolean[] {false, true}) {
          Tensor[] p = pair(DType.FLOAT32, rand(n, n, 1), n);
          Tensor[] buf = pair(DType.FLOAT32, new float[n], n);
          for (int step = 0; step < 4; step++) {
            Tensor[] g = pair(DType.FLOAT32, rand(n, n + step, 0.1), n);
            cpu.sgdStep(p[0], g[0], momentum == 0f ? null : buf[0], 0.05f, momentum, nesterov, 1e-4f, step == 0);
            gpu.sgdStep(p[1], g[1], momentum == 0f ? null : buf[1], 0.05f, momentum, nesterov, 1e-4f, step == 0);
          }
          same(p, FP32_TOL, "sgd n=" + n + " momentum=" + momentum + " nesterov=" + nesterov + " (4 steps)");
          if (momentum != 0f) {
            same(buf, FP32_TOL, "sgd momentum buffer n=" + n);
          }
        }
      }
    }
  }

  @Test
  void fusedAdamwMatchesCpu() {
    for (int n : new int[] {1, 1000, 65537}) {
      Tensor[] p = pair(DType.FLOAT32, rand(n, n, 1), n);
      Tensor[] m = pair(DType.FLOAT32, new float[n], n);
      Tensor[] v = pair(DType.FLOAT32, new float[n], n);
      for (int step = 1; step <= 5; step++) {
        Tensor[] g = pair(DType.FLOAT32, rand(n, n * 10L + step, 0.1), n);
        cpu.adamwStep(p[0], g[0], m[0], v[0], 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
        gpu.adamwStep(p[1], g[1], m[1], v[1], 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
      }
      same(p, FP32_TOL, "adamw params n=" + n + " (5 steps)");
      same(m, FP32_TOL, "adamw m n=" + n);
      same(v, FP32_TOL, "adamw v n=" + n);
    }
    // bf16 gradients into fp32 master weights
    int n = 4099;
    Tensor[] p = pair(DType.FLOAT32, rand(n, 1, 1), n);
    Tensor[] m = pair(DType.FLOAT32, new float[n], n);
    Tensor[] v = pair(DType.FLOAT32, new float[n], n);
    Tensor[] g = pair(DType.BFLOAT16, rand(n, 2, 0.1), n);
    cpu.adamwStep(p[0], g[0], m[0], v[0], 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
    gpu.adamwStep(p[1], g[1], m[1], v[1], 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
    same(p, FP32_TOL, "adamw fp32 params with bf16 grads");
  }

  @Test
  void opsRejectForeignTensorsAndWrongDtypes() {
    Tensor c = cpu.allocate(DType.FLOAT32, 4);
    Tensor g = gpu.allocate(DType.FLOAT32, 4);
    assertThrows(IllegalArgumentException.class, () -> gpu.axpy(1f, c, g));
    Tensor gi = gpu.allocate(DType.INT32, 4);
    assertThrows(IllegalArgumentException.class, () -> gpu.relu(gi, g));
    Tensor bf = gpu.allocate(DType.BFLOAT16, 4);
    assertThrows(IllegalArgumentException.class,
        () -> gpu.adamwStep(bf, g, g, g, 1f, 0.9f, 0.99f, 1e-8f, 0f, 1));
  }
}
