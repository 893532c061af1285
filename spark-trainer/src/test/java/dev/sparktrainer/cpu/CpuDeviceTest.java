package dev.sparktrainer.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Rng;
import dev.sparktrainer.engine.Tensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.function.Consumer;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * The CPU op set against plain reference loops in double. Tolerances: 1e-5 relative (plus a 1e-6 absolute
 * floor) for float results of short reductions; exact where the op is a single float operation per element.
 */
class CpuDeviceTest {
  private final CpuDevice dev = new CpuDevice();
  private final SplittableRandom rng = new SplittableRandom(42);

  @AfterEach
  void close() {
    dev.close();
  }

  // ---- helpers ----

  private float[] rand(int n) {
    float[] a = new float[n];
    for (int k = 0; k < n; k++) {
      a[k] = (float) (rng.nextDouble() * 2 - 1);
    }
    return a;
  }

  private Tensor tensor(float[] values, int... shape) {
    Tensor t = dev.allocate(DType.FLOAT32, shape);
    dev.upload(values, 0, t);
    return t;
  }

  private Tensor ints(int[] values, int... shape) {
    Tensor t = dev.allocate(DType.INT32, shape);
    dev.upload(values, 0, t);
    return t;
  }

  private float[] host(Tensor t) {
    float[] a = new float[t.size()];
    dev.download(t, a, 0);
    return a;
  }

  private static void assertClose(double want, double got, double rtol, String what) {
    double tol = rtol * Math.max(Math.abs(want), 1e-1);
    assertTrue(Math.abs(want - got) <= tol, what + ": want " + want + ", got " + got + " (tolerance " + tol + ")");
  }

  private static void assertAllClose(double[] want, float[] got, double rtol, String what) {
    assertEquals(want.length, got.length, what + ": length");
    for (int k = 0; k < want.length; k++) {
      assertClose(want[k], got[k], rtol, what + "[" + k + "]");
    }
  }

  private static float bf(int bits) {
    return Float.intBitsToFloat(bits);
  }

  private static int bits(float f) {
    return Float.floatToRawIntBits(f);
  }

  // ---- matmul ----

  /** C = alpha op(A) op(B) + beta C with a naive triple loop in double. */
  private static double[] naiveMatmul(float[] a, boolean ta, int aCols, float[] b, boolean tb, int bCols,
      float[] c, int m, int k, int n, float alpha, float beta) {
    double[] out = new double[m * n];
    for (int i = 0; i < m; i++) {
      for (int j = 0; j < n; j++) {
        double s = 0;
        for (int p = 0; p < k; p++) {
          double av = ta ? a[p * aCols + i] : a[i * aCols + p];
          double bv = tb ? b[j * bCols + p] : b[p * bCols + j];
          s += av * bv;
        }
        out[i * n + j] = (double) alpha * s + (double) beta * c[i * n + j];
      }
    }
    return out;
  }

  @Test
  void matmulAllTransposeCombinationsMatchNaiveLoop() {
    int m = 5;
    int k = 7;
    int n = 3;
    float alpha = 0.75f;
    float beta = -1.5f;
    for (boolean ta : new boolean[] {false, true}) {
      for (boolean tb : new boolean[] {false, true}) {
        int[] aShape = ta ? new int[] {k, m} : new int[] {m, k};
        int[] bShape = tb ? new int[] {n, k} : new int[] {k, n};
        float[] a = rand(m * k);
        float[] b = rand(k * n);
        float[] c0 = rand(m * n);
        Tensor ta_ = tensor(a, aShape);
        Tensor tb_ = tensor(b, bShape);
        Tensor tc = tensor(c0, m, n);
        dev.matmul(ta_, ta, tb_, tb, tc, alpha, beta);
        double[] want = naiveMatmul(a, ta, aShape[1], b, tb, bShape[1], c0, m, k, n, alpha, beta);
        assertAllClose(want, host(tc), 1e-5, "matmul transA=" + ta + " transB=" + tb);

        // beta = 0 overwrites C, even when it holds garbage.
        Tensor tc2 = tensor(c0, m, n);
        dev.matmul(ta_, ta, tb_, tb, tc2, 1f, 0f);
        double[] want2 = naiveMatmul(a, ta, aShape[1], b, tb, bShape[1], new float[m * n], m, k, n, 1f, 0f);
        assertAllClose(want2, host(tc2), 1e-5, "matmul beta=0 transA=" + ta + " transB=" + tb);
      }
    }
  }

  @Test
  void matmulOnViewsRespectsOffsetsAndLeavesNeighboursAlone() {
    int m = 3;
    int k = 5;
    int n = 7;
    float[] a = rand(m * k);
    float[] b = rand(n * k);
    Tensor flat = dev.allocate(DType.FLOAT32, 200);
    dev.fill(flat, 9f);
    Tensor va = flat.view(3, m, k);
    Tensor vb = flat.view(40, n, k);
    Tensor vc = flat.view(101, m, n);
    dev.upload(a, 0, va);
    dev.upload(b, 0, vb);
    dev.fill(vc, 0f);
    dev.matmul(va, false, vb, true, vc, 1f, 0f);
    double[] want = naiveMatmul(a, false, k, b, true, k, new float[m * n], m, k, n, 1f, 0f);
    assertAllClose(want, host(vc), 1e-5, "matmul on views");
    float[] all = host(flat);
    for (int i = 0; i < all.length; i++) {
      boolean inside = (i >= 3 && i < 3 + m * k) || (i >= 40 && i < 40 + n * k) || (i >= 101 && i < 101 + m * n);
      if (!inside) {
        assertEquals(9f, all[i], "element " + i + " outside every view was written");
      }
    }
  }

  @Test
  void matmulRejectsShapesThatDoNotAgree() {
    Tensor a = dev.allocate(DType.FLOAT32, 5, 7);
    Tensor b = dev.allocate(DType.FLOAT32, 6, 3);
    Tensor c = dev.allocate(DType.FLOAT32, 5, 3);
    IllegalArgumentException e =
        assertThrows(IllegalArgumentException.class, () -> dev.matmul(a, false, b, false, c, 1f, 0f));
    assertEquals("matmul shapes do not agree: op(A)=(5, 7), op(B)=(6, 3), C=(5, 3)", e.getMessage());
    Tensor v = dev.allocate(DType.FLOAT32, 7);
    assertThrows(IllegalArgumentException.class, () -> dev.matmul(v, false, b, false, c, 1f, 0f));
  }

  // ---- bias ----

  @Test
  void addBiasAndBiasGrad() {
    int rows = 5;
    int cols = 3;
    float[] y = rand(rows * cols);
    float[] bias = rand(cols);
    Tensor ty = tensor(y, rows, cols);
    dev.addBias(ty, tensor(bias, cols));
    double[] want = new double[rows * cols];
    for (int r = 0; r < rows; r++) {
      for (int j = 0; j < cols; j++) {
        want[r * cols + j] = (double) y[r * cols + j] + bias[j];
      }
    }
    assertAllClose(want, host(ty), 1e-6, "addBias");

    float[] dy = rand(rows * cols);
    float[] db0 = rand(cols);
    Tensor tdb = tensor(db0, cols);
    dev.biasGrad(tensor(dy, rows, cols), tdb);
    double[] wantDb = new double[cols];
    for (int j = 0; j < cols; j++) {
      wantDb[j] = db0[j]; // accumulates
      for (int r = 0; r < rows; r++) {
        wantDb[j] += dy[r * cols + j];
      }
    }
    assertAllClose(wantDb, host(tdb), 1e-5, "biasGrad (+=)");

    assertThrows(IllegalArgumentException.class, () -> dev.addBias(ty, dev.allocate(DType.FLOAT32, 4)));
  }

  // ---- activations ----

  @Test
  void reluAndGeluMatchTheirFormulas() {
    float[] x = rand(37);
    x[0] = 0f;
    x[1] = -0f;
    float[] dy = rand(37);
    Tensor tx = tensor(x, 37);
    Tensor ty = dev.allocate(DType.FLOAT32, 37);
    Tensor tdx = dev.allocate(DType.FLOAT32, 37);
    dev.relu(tx, ty);
    dev.reluBackward(tx, tensor(dy, 37), tdx);
    float[] y = host(ty);
    float[] dx = host(tdx);
    for (int k = 0; k < x.length; k++) {
      assertEquals(Math.max(x[k], 0f), y[k], "relu[" + k + "]");
      assertEquals(x[k] > 0 ? dy[k] : 0f, dx[k], "reluBackward[" + k + "]");
    }

    dev.gelu(tx, ty);
    dev.geluBackward(tx, tensor(dy, 37), tdx);
    double c = Math.sqrt(2 / Math.PI);
    double[] wantY = new double[37];
    double[] wantDx = new double[37];
    for (int k = 0; k < x.length; k++) {
      double v = x[k];
      double th = Math.tanh(c * (v + 0.044715 * v * v * v));
      wantY[k] = 0.5 * v * (1 + th);
      wantDx[k] = dy[k] * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * c * (1 + 3 * 0.044715 * v * v));
    }
    assertAllClose(wantY, host(ty), 1e-5, "gelu");
    assertAllClose(wantDx, host(tdx), 1e-5, "geluBackward");
  }

  // ---- dropout ----

  @Test
  void dropoutKeepsAboutOneMinusPAndScalesKeptValues() {
    int n = 100_000;
    float p = 0.3f;
    float[] ones = new float[n];
    Arrays.fill(ones, 1f);
    Tensor x = tensor(ones, n);
    Tensor y = dev.allocate(DType.FLOAT32, n);
    dev.dropout(x, y, p, 1234L, 0L);
    float[] out = host(y);
    int kept = 0;
    float scale = 1f / (1f - p);
    for (int k = 0; k < n; k++) {
      if (out[k] != 0f) {
        kept++;
        assertEquals(scale, out[k], "kept values are scaled by 1/(1-p)");
      }
      assertEquals(Rng.uniform(1234L, k) >= p, out[k] != 0f, "mask follows Rng.uniform at " + k);
    }
    double frac = kept / (double) n;
    // Binomial std is sqrt(0.21 / 1e5) ~ 0.0015; 0.01 is ~7 sigma.
    assertTrue(Math.abs(frac - 0.7) < 0.01, "kept fraction " + frac);
  }

  @Test
  void dropoutIsReproducibleForSeedAndOffsetAndDiffersForAnotherSeed() {
    int n = 1000;
    float[] x = rand(n);
    Tensor tx = tensor(x, n);
    Tensor a = dev.allocate(DType.FLOAT32, n);
    Tensor b = dev.allocate(DType.FLOAT32, n);
    Tensor c = dev.allocate(DType.FLOAT32, n);
    dev.dropout(tx, a, 0.5f, 7L, 0L);
    dev.dropout(tx, b, 0.5f, 7L, 0L);
    dev.dropout(tx, c, 0.5f, 8L, 0L);
    assertArrayEquals(host(a), host(b), "same seed and offset -> same output");
    float[] ha = host(a);
    float[] hc = host(c);
    int differ = 0;
    for (int k = 0; k < n; k++) {
      if ((ha[k] == 0f) != (hc[k] == 0f)) {
        differ++;
      }
    }
    assertTrue(differ > n / 4, "another seed draws another mask (differences: " + differ + ")");

    // An offset shifts the stream: dropout of x[10:] with offset 10 equals elements 10.. of the full output.
    Tensor tail = tx.view(10, n - 10);
    Tensor out = dev.allocate(DType.FLOAT32, n - 10);
    dev.dropout(tail, out, 0.5f, 7L, 10L);
    assertArrayEquals(Arrays.copyOfRange(ha, 10, n), host(out), "offset continues the same stream");

    // Backward uses the same mask as forward.
    float[] dy = rand(n);
    Tensor tdx = dev.allocate(DType.FLOAT32, n);
    dev.dropoutBackward(tensor(dy, n), tdx, 0.5f, 7L, 0L);
    float[] dx = host(tdx);
    for (int k = 0; k < n; k++) {
      assertEquals(ha[k] == 0f && x[k] != 0f, dx[k] == 0f && dy[k] != 0f, "mask of backward at " + k);
      if (ha[k] != 0f) {
        assertEquals(dy[k] * 2f, dx[k], "backward scale at " + k);
      }
    }
  }

  // ---- losses and classification ----

  @Test
  void softmaxRowsSumToOneAndSurviveLargeLogits() {
    int rows = 7;
    int cols = 5;
    float[] z = rand(rows * cols);
    z[0] = 1000f; // would overflow exp without the max shift
    z[1] = 999f;
    Tensor probs = dev.allocate(DType.FLOAT32, rows, cols);
    dev.softmax(tensor(z, rows, cols), probs);
    float[] p = host(probs);
    for (int r = 0; r < rows; r++) {
      double max = Double.NEGATIVE_INFINITY;
      for (int j = 0; j < cols; j++) {
        max = Math.max(max, z[r * cols + j]);
      }
      double denom = 0;
      for (int j = 0; j < cols; j++) {
        denom += Math.exp(z[r * cols + j] - max);
      }
      double s = 0;
      for (int j = 0; j < cols; j++) {
        float v = p[r * cols + j];
        assertTrue(Float.isFinite(v) && v >= 0, "prob " + v);
        assertClose(Math.exp(z[r * cols + j] - max) / denom, v, 1e-5, "softmax[" + r + "," + j + "]");
        s += v;
      }
      assertEquals(1.0, s, 1e-6, "row " + r + " sums to 1");
    }
  }

  @Test
  void softmaxCrossEntropyMatchesReference() {
    int rows = 3;
    int cols = 5;
    float[] z = rand(rows * cols);
    int[] labels = {4, 0, 2};
    Tensor losses = dev.allocate(DType.FLOAT32, rows);
    Tensor dz = dev.allocate(DType.FLOAT32, rows, cols);
    float scale = 1f / rows;
    dev.softmaxCrossEntropy(tensor(z, rows, cols), ints(labels, rows), losses, dz, scale);
    double[] wantL = new double[rows];
    double[] wantD = new double[rows * cols];
    for (int r = 0; r < rows; r++) {
      double denom = 0;
      for (int j = 0; j < cols; j++) {
        denom += Math.exp(z[r * cols + j]);
      }
      wantL[r] = Math.log(denom) - z[r * cols + labels[r]];
      for (int j = 0; j < cols; j++) {
        wantD[r * cols + j] = (Math.exp(z[r * cols + j]) / denom - (j == labels[r] ? 1 : 0)) * scale;
      }
    }
    assertAllClose(wantL, host(losses), 1e-5, "losses");
    assertAllClose(wantD, host(dz), 1e-5, "dlogits");

    // dlogits may be null (evaluation).
    Tensor losses2 = dev.allocate(DType.FLOAT32, rows);
    dev.softmaxCrossEntropy(tensor(z, rows, cols), ints(labels, rows), losses2, null, 1f);
    assertArrayEquals(host(losses), host(losses2));
  }

  @Test
  void outOfRangeLabelThrowsWithMessage() {
    Tensor z = tensor(rand(10), 2, 5);
    Tensor losses = dev.allocate(DType.FLOAT32, 2);
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> dev.softmaxCrossEntropy(z, ints(new int[] {1, 5}, 2), losses, null, 1f));
    assertEquals("label 5 at row 1 is outside [0, 5)", e.getMessage());
    e = assertThrows(IllegalArgumentException.class,
        () -> dev.softmaxCrossEntropy(z, ints(new int[] {-1, 0}, 2), losses, null, 1f));
    assertEquals("label -1 at row 0 is outside [0, 5)", e.getMessage());
    assertThrows(IllegalArgumentException.class,
        () -> dev.softmaxCrossEntropy(z, ints(new int[] {1, 2, 3}, 3), losses, null, 1f));
  }

  @Test
  void argmaxAndCountCorrectFirstMaximumWins() {
    float[] z = {
        1f, 3f, 3f, 0f, // tie: index 1
        5f, 5f, 5f, 5f, // all equal: index 0
        -2f, -1f, -3f, -1f, // tie: index 1
        0f, 0f, 0f, 7f, // index 3
        -0f, 0f, -1f, -1f, // -0 == 0: index 0
    };
    Tensor logits = tensor(z, 5, 4);
    Tensor out = dev.allocate(DType.INT32, 5);
    dev.argmax(logits, out);
    int[] got = new int[5];
    dev.download(out, got, 0);
    assertArrayEquals(new int[] {1, 0, 1, 3, 0}, got);

    Tensor correct = dev.allocate(DType.FLOAT32, 1);
    dev.fill(correct, 10f); // accumulates
    dev.countCorrect(logits, ints(new int[] {1, 0, 3, 3, 1}, 5), correct);
    assertEquals(13f, host(correct)[0], "rows 0, 1 and 3 are right; 2 and 4 lose their ties");
  }

  @Test
  void mseLossesAndGradient() {
    int rows = 3;
    int cols = 4;
    float[] p = rand(rows * cols);
    float[] t = rand(rows * cols);
    Tensor losses = dev.allocate(DType.FLOAT32, rows);
    Tensor dp = dev.allocate(DType.FLOAT32, rows, cols);
    dev.mse(tensor(p, rows, cols), tensor(t, rows, cols), losses, dp, 0.5f);
    double[] wantL = new double[rows];
    double[] wantD = new double[rows * cols];
    for (int r = 0; r < rows; r++) {
      for (int j = 0; j < cols; j++) {
        double d = (double) p[r * cols + j] - t[r * cols + j];
        wantL[r] += d * d / cols;
        wantD[r * cols + j] = 2 * d / cols * 0.5;
      }
    }
    assertAllClose(wantL, host(losses), 1e-5, "mse losses");
    assertAllClose(wantD, host(dp), 1e-5, "mse dpred");
  }

  // ---- bf16 ----

  @Test
  void roundBf16IsRoundToNearestTiesToEven() {
    // Exactly representable: unchanged.
    assertEquals(0x3f800000, bits(CpuDevice.roundBf16(bf(0x3f800000))));
    assertEquals(0x3f810000, bits(CpuDevice.roundBf16(bf(0x3f810000))));
    // Below / above the halfway point.
    assertEquals(0x3f800000, bits(CpuDevice.roundBf16(bf(0x3f807fff))));
    assertEquals(0x3f810000, bits(CpuDevice.roundBf16(bf(0x3f808001))));
    // Exactly halfway: to the even neighbour (down from ...80, up from ...81).
    assertEquals(0x3f800000, bits(CpuDevice.roundBf16(bf(0x3f808000))));
    assertEquals(0x3f820000, bits(CpuDevice.roundBf16(bf(0x3f818000))));
    // Negative values mirror positive ones.
    assertEquals(0xbf800000, bits(CpuDevice.roundBf16(bf(0xbf808000))));
    assertEquals(0xbf820000, bits(CpuDevice.roundBf16(bf(0xbf818000))));
    // A tie on an odd mantissa (0x7f) carries into the exponent: 1.9921875 + half ulp -> 2.0.
    assertEquals(0x40000000, bits(CpuDevice.roundBf16(bf(0x3fff8000))));
    // Subnormals: tie to even.
    assertEquals(0x00000000, bits(CpuDevice.roundBf16(bf(0x00008000))));
    assertEquals(0x00020000, bits(CpuDevice.roundBf16(bf(0x00018000))));
    // Largest float rounds past the largest bf16 to infinity; infinities and zeros stay.
    assertEquals(0x7f800000, bits(CpuDevice.roundBf16(bf(0x7f7fffff))));
    assertEquals(0x7f7f0000, bits(CpuDevice.roundBf16(bf(0x7f7f7fff))));
    assertEquals(0x7f800000, bits(CpuDevice.roundBf16(Float.POSITIVE_INFINITY)));
    assertEquals(0xff800000, bits(CpuDevice.roundBf16(Float.NEGATIVE_INFINITY)));
    assertEquals(0x80000000, bits(CpuDevice.roundBf16(-0f)));
    // NaN stays NaN, also a NaN whose payload is only in the low 16 bits, and the result is a bf16 value.
    for (int nan : new int[] {0x7fc00000, 0x7f800001, 0xff800001, 0x7fa00000}) {
      float r = CpuDevice.roundBf16(bf(nan));
      assertTrue(Float.isNaN(r), "NaN " + Integer.toHexString(nan) + " stays NaN");
      assertEquals(0, bits(r) & 0xffff, "NaN " + Integer.toHexString(nan) + " has no bits below bf16");
      assertEquals(nan & 0x80000000, bits(r) & 0x80000000, "sign of NaN kept");
    }
  }

  @Test
  void bf16TensorsStoreRoundedValues() {
    float[] src = {bf(0x3f808000), bf(0x3f818000), bf(0x3f808001), 1.1f};
    Tensor h = dev.allocate(DType.BFLOAT16, 4);
    dev.upload(src, 0, h);
    float[] got = host(h);
    for (int k = 0; k < 4; k++) {
      assertEquals(bits(CpuDevice.roundBf16(src[k])), bits(got[k]), "upload rounds element " + k);
    }
    Tensor f = tensor(src, 4);
    Tensor h2 = dev.allocate(DType.BFLOAT16, 4);
    dev.copy(f, h2);
    assertArrayEquals(got, host(h2), "fp32 -> bf16 copy rounds");
    Tensor back = dev.allocate(DType.FLOAT32, 4);
    dev.copy(h2, back);
    assertArrayEquals(got, host(back), "bf16 -> fp32 copy is exact");

    // Little-endian bf16 bytes upload into exact values.
    ByteBuffer bb = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
    bb.putShort((short) 0x3f80).putShort((short) 0xc040).putShort((short) 0x0000).putShort((short) 0x7f80);
    bb.flip();
    Tensor h3 = dev.allocate(DType.BFLOAT16, 4);
    dev.upload(bb, h3);
    assertArrayEquals(new float[] {1f, -3f, 0f, Float.POSITIVE_INFINITY}, host(h3));
    assertEquals(0, bb.position(), "upload does not move the buffer's position");
  }

  // ---- BLAS-1, reductions ----

  @Test
  void sumAndSumSquaresInDouble() {
    float[] x = rand(1001);
    double s = 0;
    double ss = 0;
    for (float v : x) {
      s += v;
      ss += (double) v * v;
    }
    Tensor t = tensor(x, 7, 11, 13);
    assertEquals(s, dev.sum(t), 1e-9);
    assertEquals(ss, dev.sumSquares(t), 1e-9);
    // Many small values: a float accumulator would drift, a double one does not.
    float[] tiny = new float[1 << 20];
    Arrays.fill(tiny, 0.1f);
    double want = (1 << 20) * (double) 0.1f;
    assertEquals(want, dev.sum(tensor(tiny, tiny.length)), 1e-6 * want);
    assertEquals((1 << 20) * (double) 0.1f * 0.1f, dev.sumSquares(tensor(tiny, tiny.length)), 1e-6 * want);

    Tensor acc = tensor(new float[] {1f}, 1);
    dev.sumInto(tensor(new float[] {1f, 2f, 3.5f}, 3), acc);
    assertEquals(7.5f, host(acc)[0]);
    assertEquals(6.0, dev.sum(ints(new int[] {1, 2, 3}, 3)));
  }

  @Test
  void axpyScaleFillCopy() {
    float[] x = rand(13);
    float[] y = rand(13);
    Tensor tx = tensor(x, 13);
    Tensor ty = tensor(y, 13);
    dev.axpy(-0.5f, tx, ty);
    float[] got = host(ty);
    for (int k = 0; k < 13; k++) {
      assertEquals(y[k] + -0.5f * x[k], got[k], "axpy[" + k + "]");
    }
    dev.scale(ty, 3f);
    float[] scaled = host(ty);
    for (int k = 0; k < 13; k++) {
      assertEquals(got[k] * 3f, scaled[k], "scale[" + k + "]");
    }
    dev.fill(ty, 2.5f);
    for (float v : host(ty)) {
      assertEquals(2.5f, v);
    }
    dev.copy(tx, ty);
    assertArrayEquals(x, host(ty));

    Tensor ti = dev.allocate(DType.INT32, 4);
    dev.fill(ti, 7f);
    int[] hi = new int[4];
    dev.download(ti, hi, 0);
    assertArrayEquals(new int[] {7, 7, 7, 7}, hi);

    IllegalArgumentException e =
        assertThrows(IllegalArgumentException.class, () -> dev.axpy(1f, tx, dev.allocate(DType.FLOAT32, 12)));
    assertTrue(e.getMessage().startsWith("axpy: sizes differ"), e.getMessage());
    assertThrows(IllegalArgumentException.class, () -> dev.copy(tx, dev.allocate(DType.INT32, 13)));
  }

  // ---- views into a flat buffer ----

  /** Runs {@code op} on a view in the middle of a sentinel-filled buffer and checks nothing else moved. */
  private void checkNeighboursUntouched(String what, Consumer<Tensor[]> op) {
    int n = 11;
    Tensor flat = dev.allocate(DType.FLOAT32, 3 * 64);
    dev.fill(flat, -7f);
    Tensor v1 = flat.view(64, n);
    Tensor v2 = flat.view(128, n);
    dev.upload(rand(n), 0, v1);
    dev.upload(rand(n), 0, v2);
    float[] before = host(flat);
    op.accept(new Tensor[] {v1, v2});
    float[] after = host(flat);
    boolean changed = false;
    for (int k = 0; k < after.length; k++) {
      boolean inV2 = k >= 128 && k < 128 + n;
      if (!inV2) {
        assertEquals(before[k], after[k], what + ": element " + k + " outside the output view changed");
      } else if (before[k] != after[k]) {
        changed = true;
      }
    }
    assertTrue(changed, what + ": the output view was not written at its offset");
  }

  @Test
  void opsOnViewsRespectOffsetsAndLeaveNeighboursAlone() {
    checkNeighboursUntouched("fill", v -> dev.fill(v[1], 3f));
    checkNeighboursUntouched("copy", v -> dev.copy(v[0], v[1]));
    checkNeighboursUntouched("axpy", v -> dev.axpy(2f, v[0], v[1]));
    checkNeighboursUntouched("scale", v -> dev.scale(v[1], 2f));
    checkNeighboursUntouched("relu", v -> dev.relu(v[0], v[1]));
    checkNeighboursUntouched("gelu", v -> dev.gelu(v[0], v[1]));
    checkNeighboursUntouched("dropout", v -> dev.dropout(v[0], v[1], 0.5f, 3L, 0L));
    checkNeighboursUntouched("softmax", v -> dev.softmax(v[0].reshape(1, 11), v[1].reshape(1, 11)));
    checkNeighboursUntouched("addBias", v -> dev.addBias(v[1].reshape(1, 11), v[0]));
    checkNeighboursUntouched("biasGrad", v -> dev.biasGrad(v[0].reshape(1, 11), v[1]));
    checkNeighboursUntouched("upload", v -> dev.upload(rand(11), 0, v[1]));
    checkNeighboursUntouched("sgdStep", v -> dev.sgdStep(v[1], v[0], null, 0.1f, 0f, false, 0f, true));
    checkNeighboursUntouched("adamwStep", v -> {
      Tensor m = dev.allocate(DType.FLOAT32, 11);
      Tensor s = dev.allocate(DType.FLOAT32, 11);
      dev.adamwStep(v[1], v[0], m, s, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
    });
    // Sums read only their view.
    Tensor flat = dev.allocate(DType.FLOAT32, 10);
    dev.upload(new float[] {100, 1, 2, 3, 100, 100, 100, 100, 100, 100}, 0, flat);
    assertEquals(6.0, dev.sum(flat.view(1, 3)));
    assertEquals(14.0, dev.sumSquares(flat.view(1, 3)));
    float[] out = new float[5];
    dev.download(flat.view(1, 3), out, 2);
    assertArrayEquals(new float[] {0, 0, 1, 2, 3}, out);
  }

  @Test
  void parameterSetViewsAreAlignedAndDisjoint() {
    ParameterSet.Builder b = ParameterSet.builder();
    int w = b.add("w", 3, 5);
    int bias = b.add("b", 7);
    ParameterSet ps = b.build(dev);
    assertEquals(0, ps.entries().get(w).offset());
    assertEquals(64, ps.entries().get(bias).offset());
    assertEquals(128, ps.totalElements());
    assertEquals(22, ps.parameterCount());
    dev.fill(ps.param(bias), 1f);
    dev.fill(ps.grad(w), 2f);
    float[] p = host(ps.params());
    float[] g = host(ps.grads());
    for (int k = 0; k < 128; k++) {
      assertEquals(k >= 64 && k < 71 ? 1f : 0f, p[k], "param " + k);
      assertEquals(k < 15 ? 2f : 0f, g[k], "grad " + k);
    }
    CpuTensor view = (CpuTensor) ps.param(bias);
    assertSame(((CpuTensor) ps.params()).floats(), view.floats(), "a view shares the flat buffer");
    assertEquals(64, view.offset());
    assertThrows(IllegalArgumentException.class, () -> b.add("w", 2));
  }

  @Test
  void viewsOutsideTheAllocationThrow() {
    Tensor t = dev.allocate(DType.FLOAT32, 10);
    assertThrows(IndexOutOfBoundsException.class, () -> t.view(5, 6));
    assertThrows(IndexOutOfBoundsException.class, () -> t.view(-1, 2));
    Tensor v = t.view(5, 5);
    assertThrows(IndexOutOfBoundsException.class, () -> v.view(1, 5));
    assertThrows(IllegalArgumentException.class, () -> t.reshape(3, 3));
  }

  @Test
  void closedDeviceRejectsAllocationsAndForeignTensorsAreRejected() {
    try (CpuDevice other = new CpuDevice()) {
      Tensor foreign = other.allocate(DType.FLOAT32, 3);
      IllegalArgumentException e =
          assertThrows(IllegalArgumentException.class, () -> dev.fill(foreign, 1f));
      assertTrue(e.getMessage().endsWith("does not belong to this CPU device"), e.getMessage());
    }
    CpuDevice d = new CpuDevice();
    d.close();
    d.close(); // idempotent
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> d.allocate(DType.FLOAT32, 1));
    assertEquals("CpuDevice is closed", e.getMessage());
    assertFalse(dev.blasName().isEmpty());
    assertNotEquals("", dev.name());
  }

  /**
   * Tensor#region (Note [step memory plan] in nn.StepMemoryPlan): the memory of its allocation, a storage of its
   * own shared by its views; only what allocate returned can be freed.
   */
  @Test
  void regionsShareMemoryButNotStorageAndOnlyAllocationsAreFreed() {
    Tensor slab = dev.allocate(DType.FLOAT32, 4, 8);
    Tensor a = slab.region(8, 2, 4);
    Tensor b = slab.region(16, 8);
    assertSame(a.storage(), a.view(0, 8).storage(), "a region's views share its storage");
    assertNotEquals(a.storage(), b.storage());
    assertNotEquals(slab.storage(), a.storage());
    dev.fill(a, 2f);
    float[] host = new float[32];
    dev.download(slab, host, 0);
    assertEquals(0f, host[7]);
    assertEquals(2f, host[8]);
    assertEquals(2f, host[15]);
    assertEquals(0f, host[16]);
    assertThrows(IndexOutOfBoundsException.class, () -> slab.region(30, 4));
    for (Tensor notAllocated : new Tensor[] {a, a.view(0, 8), slab.view(0, 32), slab.reshape(32)}) {
      IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> dev.free(notAllocated));
      assertTrue(e.getMessage().contains("only a tensor that allocate returned can be freed"), e.getMessage());
    }
    dev.free(slab);
    dev.free(slab); // twice: nothing
  }
}
