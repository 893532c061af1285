package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Conv2d on the CPU: the three device ops (im2col + GEMM) against a naive direct convolution in double, and
 * the layer's gradients against finite differences, over strides, padding, dilation, groups, 1x1 (the path
 * without im2col), odd and non-square sizes, batch 1 and odd batches.
 *
 * <p>Tolerance of the parity check: 1e-5 relative to the largest reference value; the float32 GEMM sums at
 * most a few hundred products of values in [-1, 1] (error ~1e-6 relative), while one wrong tap, a transposed
 * kernel or a shifted window gives errors of order 1e-1.
 */
class Conv2dTest {
  private static final double PARITY_TOL = 1e-5;
  private static final Layer.Context TRAIN = new Layer.Context(true, 1L, 1L);

  private final CpuDevice dev = new CpuDevice();
  private final CnnGradientHarness h = new CnnGradientHarness(dev, 424242L);

  @AfterEach
  void close() {
    dev.close();
  }

  /** One geometry: x (n, c, hh, ww), filters k of kh x kw. */
  record Geo(String name, int n, int c, int hh, int ww, int k, int kh, int kw, Conv2dDesc d) {
    @Override
    public String toString() {
      return name;
    }

    int oh() {
      return d.outH(hh, kh);
    }

    int ow() {
      return d.outW(ww, kw);
    }
  }

  static Stream<Geo> geometries() {
    return Stream.of(
        new Geo("3x3 plain, batch 1", 1, 1, 5, 5, 1, 3, 3, Conv2dDesc.of(1, 0)),
        new Geo("3x3 stride 2 pad 1, odd non-square, batch 3", 3, 3, 7, 6, 4, 3, 3, Conv2dDesc.of(2, 1)),
        new Geo("3x2 kernel, stride (2,1), pad (2,1), dilation (2,1), groups 2", 2, 4, 9, 8, 6, 3, 2,
            new Conv2dDesc(2, 1, 2, 1, 2, 1, 2)),
        new Geo("depthwise 3x3 pad 1 (groups = channels)", 1, 6, 5, 5, 6, 3, 3, new Conv2dDesc(1, 1, 1, 1, 1, 1, 6)),
        new Geo("1x1 stride 1 (no im2col), groups 2, batch 3", 3, 4, 3, 5, 8, 1, 1,
            new Conv2dDesc(1, 1, 0, 0, 1, 1, 2)),
        new Geo("1x1 stride 2 (ResNet downsample)", 2, 3, 7, 7, 5, 1, 1, Conv2dDesc.of(2, 0)),
        new Geo("7x7 stride 2 pad 3 (ResNet stem), batch 1", 1, 3, 13, 11, 4, 7, 7, Conv2dDesc.of(2, 3)),
        new Geo("kernel larger than input with padding", 1, 2, 2, 3, 3, 3, 3, Conv2dDesc.of(1, 1)),
        new Geo("stride 3 skips pixels, dilation 2, batch 5", 5, 2, 10, 9, 3, 2, 3,
            new Conv2dDesc(3, 3, 1, 0, 2, 2, 1)));
  }

  // ---- the naive reference (double) ----

  /** x value at (b, ch, ih, iw) or 0 outside. */
  private static double at(float[] x, Geo g, int b, int ch, int ih, int iw) {
    if (ih < 0 || ih >= g.hh() || iw < 0 || iw >= g.ww()) {
      return 0;
    }
    return x[((b * g.c() + ch) * g.hh() + ih) * g.ww() + iw];
  }

  /** Calls f(b, k, p, q, ch, i, j, ih, iw) for every tap of every output. */
  interface Tap {
    void apply(int b, int k, int p, int q, int ch, int i, int j, int ih, int iw);
  }

  private static void forEachTap(Geo g, Tap f) {
    Conv2dDesc d = g.d();
    int cg = g.c() / d.groups();
    int kg = g.k() / d.groups();
    for (int b = 0; b < g.n(); b++) {
      for (int k = 0; k < g.k(); k++) {
        int grp = k / kg;
        for (int p = 0; p < g.oh(); p++) {
          for (int q = 0; q < g.ow(); q++) {
            for (int cl = 0; cl < cg; cl++) {
              for (int i = 0; i < g.kh(); i++) {
                for (int j = 0; j < g.kw(); j++) {
                  f.apply(b, k, p, q, grp * cg + cl, i, j, p * d.strideH() - d.padH() + i * d.dilationH(),
                      q * d.strideW() - d.padW() + j * d.dilationW());
                }
              }
            }
          }
        }
      }
    }
  }

  private static int wIndex(Geo g, int k, int ch, int i, int j) {
    int cg = g.c() / g.d().groups();
    return ((k * cg + ch % cg) * g.kh() + i) * g.kw() + j;
  }

  private static int yIndex(Geo g, int b, int k, int p, int q) {
    return ((b * g.k() + k) * g.oh() + p) * g.ow() + q;
  }

  static double[] naiveForward(Geo g, float[] x, float[] w, float[] bias) {
    double[] y = new double[g.n() * g.k() * g.oh() * g.ow()];
    forEachTap(g, (b, k, p, q, ch, i, j, ih, iw) ->
        y[yIndex(g, b, k, p, q)] += w[wIndex(g, k, ch, i, j)] * at(x, g, b, ch, ih, iw));
    if (bias != null) {
      for (int b = 0; b < g.n(); b++) {
        for (int k = 0; k < g.k(); k++) {
          for (int p = 0; p < g.oh() * g.ow(); p++) {
            y[(b * g.k() + k) * g.oh() * g.ow() + p] += bias[k];
          }
        }
      }
    }
    return y;
  }

  static double[] naiveBackwardData(Geo g, float[] dy, float[] w) {
    double[] dx = new double[g.n() * g.c() * g.hh() * g.ww()];
    forEachTap(g, (b, k, p, q, ch, i, j, ih, iw) -> {
      if (ih >= 0 && ih < g.hh() && iw >= 0 && iw < g.ww()) {
        dx[((b * g.c() + ch) * g.hh() + ih) * g.ww() + iw] += w[wIndex(g, k, ch, i, j)] * dy[yIndex(g, b, k, p, q)];
      }
    });
    return dx;
  }

  static double[] naiveBackwardFilter(Geo g, float[] x, float[] dy) {
    double[] dw = new double[g.k() * (g.c() / g.d().groups()) * g.kh() * g.kw()];
    forEachTap(g, (b, k, p, q, ch, i, j, ih, iw) ->
        dw[wIndex(g, k, ch, i, j)] += dy[yIndex(g, b, k, p, q)] * at(x, g, b, ch, ih, iw));
    return dw;
  }

  // ---- parity of the device ops with the reference ----

  @ParameterizedTest(name = "{0}")
  @MethodSource("geometries")
  void deviceOpsMatchNaiveConvolution(Geo g) {
    parity(g, dev, h);
  }

  private static void parity(Geo g, CpuDevice dev, CnnGradientHarness h) {
    int cg = g.c() / g.d().groups();
    float[] x = h.rand(g.n() * g.c() * g.hh() * g.ww(), -1, 1);
    float[] w = h.rand(g.k() * cg * g.kh() * g.kw(), -1, 1);
    float[] bias = h.rand(g.k(), -1, 1);
    float[] dy = h.rand(g.n() * g.k() * g.oh() * g.ow(), -1, 1);
    Tensor xt = h.tensor(x, g.n(), g.c(), g.hh(), g.ww());
    Tensor wt = h.tensor(w, g.k(), cg, g.kh(), g.kw());
    Tensor bt = h.tensor(bias, g.k());
    Tensor dyt = h.tensor(dy, g.n(), g.k(), g.oh(), g.ow());
    Tensor yt = dev.allocate(DType.FLOAT32, g.n(), g.k(), g.oh(), g.ow());

    dev.conv2dForward(xt, wt, bt, yt, g.d());
    CnnGradientHarness.assertClose(naiveForward(g, x, w, bias), h.host(yt), PARITY_TOL, g + " forward");
    dev.conv2dForward(xt, wt, null, yt, g.d());
    CnnGradientHarness.assertClose(naiveForward(g, x, w, null), h.host(yt), PARITY_TOL, g + " forward, no bias");

    Tensor dxt = h.tensor(h.rand(x.length, 5, 6), g.n(), g.c(), g.hh(), g.ww()); // garbage: must be overwritten
    dev.conv2dBackwardData(dyt, wt, dxt, g.d());
    CnnGradientHarness.assertClose(naiveBackwardData(g, dy, w), h.host(dxt), PARITY_TOL, g + " backward data");

    // backward filter accumulates: start from a known gradient
    float[] dw0 = h.rand(w.length, -1, 1);
    float[] db0 = h.rand(g.k(), -1, 1);
    Tensor dwt = h.tensor(dw0, g.k(), cg, g.kh(), g.kw());
    Tensor dbt = h.tensor(db0, g.k());
    dev.conv2dBackwardFilter(xt, dyt, dwt, dbt, g.d());
    double[] wantDw = naiveBackwardFilter(g, x, dy);
    for (int k = 0; k < wantDw.length; k++) {
      wantDw[k] += dw0[k];
    }
    CnnGradientHarness.assertClose(wantDw, h.host(dwt), PARITY_TOL, g + " backward filter (+=)");
    double[] wantDb = new double[g.k()];
    for (int b = 0; b < g.n(); b++) {
      for (int k = 0; k < g.k(); k++) {
        for (int p = 0; p < g.oh() * g.ow(); p++) {
          wantDb[k] += dy[(b * g.k() + k) * g.oh() * g.ow() + p];
        }
      }
    }
    for (int k = 0; k < g.k(); k++) {
      wantDb[k] += db0[k];
    }
    CnnGradientHarness.assertClose(wantDb, h.host(dbt), PARITY_TOL, g + " bias gradient (+=)");
  }

  /**
   * Batches whose im2col does not fit one chunk: with the scratch capped at 2.5 samples' worth (system
   * property sparktrainer.cpu.im2colFloats, read when a CpuDevice is made), 5 samples run as chunks of 2, 2
   * and 1 (Note [batched im2col] in CpuConv).
   */
  @Test
  void batchesLargerThanOneIm2colChunk() {
    Geo g = new Geo("chunks of 2, 2, 1", 5, 4, 9, 7, 6, 3, 3, new Conv2dDesc(2, 1, 1, 1, 1, 1, 2));
    int perSample = 2 * 9 * g.oh() * g.ow();
    String key = "sparktrainer.cpu.im2colFloats";
    System.setProperty(key, Integer.toString(perSample * 5 / 2));
    try (CpuDevice capped = new CpuDevice()) {
      System.clearProperty(key);
      parity(g, capped, new CnnGradientHarness(capped, 5L));
    } finally {
      System.clearProperty(key);
    }
  }

  // ---- the layer: finite differences ----

  @ParameterizedTest(name = "{0}")
  @MethodSource("geometries")
  void layerGradients(Geo g) {
    Conv2d conv = new Conv2d(g.k(), new int[] {g.kh(), g.kw()}, g.d(), true, Conv2d.Init.UNIFORM);
    CnnGradientHarness.Case c = h.layerCase(conv, g.n(), new int[] {g.c(), g.hh(), g.ww()}, TRAIN);
    assertEquals(List.of("layer.weight", "layer.bias"), c.ps.entries().stream().map(ParameterSet.Entry::name)
        .toList());
    c.check("conv2d " + g);
  }

  @Test
  void withoutBiasHasOnlyAWeight() {
    Conv2d conv = new Conv2d(4, new int[] {3, 3}, Conv2dDesc.of(1, 1), false, Conv2d.Init.UNIFORM);
    CnnGradientHarness.Case c = h.layerCase(conv, 3, new int[] {2, 5, 4}, TRAIN);
    assertEquals(1, c.ps.entries().size());
    assertEquals(4 * 2 * 9, c.ps.parameterCount());
    c.check("conv2d without bias");
  }

  @Test
  void backwardAccumulatesAndSkipsInputGradient() {
    Conv2d conv = new Conv2d(3, new int[] {3, 3}, Conv2dDesc.of(2, 1), true, Conv2d.Init.UNIFORM);
    CnnGradientHarness.Case c = h.layerCase(conv, 2, new int[] {2, 6, 5}, TRAIN);
    double[][] once = c.analytic();
    c.forward();
    assertEquals(null, conv.backward(c.dy, TRAIN, false));
    double[] twice = c.trainable(h.host(c.ps.grads()));
    for (int k = 0; k < twice.length; k++) {
      assertEquals(2 * once[1][k], twice[k], 1e-5, "gradient " + k + " accumulates (+=)");
    }
  }

  // ---- initialisation ----

  @Test
  void initialisationFollowsPyTorch() {
    // default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C/groups * kh * kw = 8 * 3 * 3
    Conv2d conv = new Conv2d(64, new int[] {3, 3}, new Conv2dDesc(1, 1, 1, 1, 1, 1, 2), true, Conv2d.Init.UNIFORM);
    float[] w = initialWeights(conv, new int[] {16, 8, 8});
    double bound = 1 / Math.sqrt(8 * 9);
    double max = 0;
    for (float v : w) {
      max = Math.max(max, Math.abs(v));
    }
    assertTrue(max <= bound && max > 0.95 * bound, "uniform bound " + bound + ", max " + max);

    // kaiming_normal_ fan_out: std = sqrt(2 / (K kh kw)) = sqrt(2 / 576)
    Conv2d k = new Conv2d(64, new int[] {3, 3}, Conv2dDesc.of(1, 1), false, Conv2d.Init.KAIMING_NORMAL);
    float[] wk = initialWeights(k, new int[] {32, 8, 8});
    double s2 = 0;
    double mean = 0;
    for (float v : wk) {
      s2 += v * (double) v;
      mean += v;
    }
    double std = Math.sqrt(s2 / wk.length);
    double want = Math.sqrt(2.0 / 576);
    assertEquals(want, std, 0.03 * want, "kaiming std over " + wk.length + " draws");
    assertEquals(0, mean / wk.length, 0.05 * want);
  }

  private float[] initialWeights(Conv2d conv, int[] in) {
    ParameterSet.Builder b = ParameterSet.builder();
    conv.declare("c", in, b);
    ParameterSet ps = b.build(dev);
    float[] host = new float[Math.toIntExact(ps.totalElements())];
    conv.initialize(ps, host, new SplittableRandom(1));
    ParameterSet.Entry e = ps.entries().get(0);
    return java.util.Arrays.copyOfRange(host, (int) e.offset(), (int) (e.offset() + e.numel()));
  }

  // ---- errors ----

  @Test
  void shapeErrorsNameTheProblem() {
    Conv2d conv = new Conv2d(4, new int[] {5, 5}, Conv2dDesc.of(1, 0), true, Conv2d.Init.UNIFORM);
    assertEquals("conv2d expects (channels, height, width), got (784); give the model input as [C, H, W]",
        assertThrows(IllegalArgumentException.class, () -> conv.outputShape(new int[] {784})).getMessage());
    assertEquals("conv2d: kernel 5x5 (dilation 1x1) does not fit the input 4x4 with padding 0x0",
        assertThrows(IllegalArgumentException.class, () -> conv.outputShape(new int[] {1, 4, 4})).getMessage());
    Conv2d grouped = new Conv2d(4, new int[] {3, 3}, new Conv2dDesc(1, 1, 0, 0, 1, 1, 2), true,
        Conv2d.Init.UNIFORM);
    assertEquals("conv2d: input channels (3) must be divisible by groups (2)",
        assertThrows(IllegalArgumentException.class, () -> grouped.outputShape(new int[] {3, 8, 8})).getMessage());
    assertEquals("conv2d: filters (3) must be divisible by groups (2)",
        assertThrows(IllegalArgumentException.class, () -> new Conv2d(3, new int[] {3, 3},
            new Conv2dDesc(1, 1, 0, 0, 1, 1, 2), true, Conv2d.Init.UNIFORM)).getMessage());
  }

  @Test
  void deviceChecksShapes() {
    Tensor x = dev.allocate(DType.FLOAT32, 2, 3, 8, 8);
    Tensor w = dev.allocate(DType.FLOAT32, 4, 3, 3, 3);
    Tensor y = dev.allocate(DType.FLOAT32, 2, 4, 8, 8); // should be 6x6 without padding
    String m = assertThrows(IllegalArgumentException.class,
        () -> dev.conv2dForward(x, w, null, y, Conv2dDesc.of(1, 0))).getMessage();
    assertTrue(m.startsWith("conv2dForward: shapes do not agree with conv(stride 1x1, padding 0x0, dilation 1x1,"
        + " groups 1): x (2, 3, 8, 8), w (4, 3, 3, 3), y (2, 4, 8, 8)"), m);
  }

  @Test
  void backendsWithoutTheOpSayWhich() {
    Device bare = (Device) java.lang.reflect.Proxy.newProxyInstance(Device.class.getClassLoader(),
        new Class<?>[] {Device.class}, (proxy, method, args) -> {
          if (method.isDefault()) {
            return java.lang.reflect.InvocationHandler.invokeDefault(proxy, method, args);
          }
          if (method.getName().equals("name")) {
            return "bare";
          }
          throw new AssertionError(method.getName());
        });
    assertEquals("bare does not implement conv2dForward yet", assertThrows(UnsupportedOperationException.class,
        () -> bare.conv2dForward(null, null, null, null, Conv2dDesc.of(1, 0))).getMessage());
  }
}
