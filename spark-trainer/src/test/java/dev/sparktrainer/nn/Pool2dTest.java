package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Tensor;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Max and average pooling and the global average pool on the CPU: forward against a naive reference,
 * gradients against finite differences (inputs spaced 0.05 apart, more than 2h, so no window's maximum changes
 * under the step), odd sizes, padding, overlapping windows, batch 1 and odd batches.
 */
class Pool2dTest {
  private static final Layer.Context TRAIN = new Layer.Context(true, 1L, 1L);
  private final CpuDevice dev = new CpuDevice();
  private final CnnGradientHarness h = new CnnGradientHarness(dev, 777L);

  @AfterEach
  void close() {
    dev.close();
  }

  record Geo(String name, int n, int c, int hh, int ww, Pool2dDesc d) {
    @Override
    public String toString() {
      return name;
    }
  }

  static Stream<Geo> geometries() {
    return Stream.of(
        new Geo("2x2 stride 2, batch 1", 1, 2, 6, 4, Pool2dDesc.of(2, 2, 0)),
        new Geo("2x2 stride 2, odd size (last row/column dropped), batch 3", 3, 2, 7, 5, Pool2dDesc.of(2, 2, 0)),
        new Geo("3x3 stride 2 pad 1 (ResNet stem), batch 1", 1, 3, 9, 8, Pool2dDesc.of(3, 2, 1)),
        new Geo("3x3 stride 1 pad 1 (overlapping), batch 2", 2, 1, 5, 6, Pool2dDesc.of(3, 1, 1)),
        new Geo("3x2 stride (1,2) pad (1,0), batch 5", 5, 2, 6, 7, new Pool2dDesc(3, 2, 1, 2, 1, 0)));
  }

  /** Naive pooling: max (padding -inf) or sum / (kh kw) (padding counts as zero). */
  static double[] naive(float[] x, Geo g, boolean average) {
    Pool2dDesc d = g.d();
    int oh = d.outH(g.hh());
    int ow = d.outW(g.ww());
    double[] y = new double[g.n() * g.c() * oh * ow];
    for (int pl = 0; pl < g.n() * g.c(); pl++) {
      for (int p = 0; p < oh; p++) {
        for (int q = 0; q < ow; q++) {
          double acc = average ? 0 : Double.NEGATIVE_INFINITY;
          for (int i = 0; i < d.kernelH(); i++) {
            for (int j = 0; j < d.kernelW(); j++) {
              int ih = p * d.strideH() - d.padH() + i;
              int iw = q * d.strideW() - d.padW() + j;
              if (ih >= 0 && ih < g.hh() && iw >= 0 && iw < g.ww()) {
                double v = x[(pl * g.hh() + ih) * g.ww() + iw];
                acc = average ? acc + v : Math.max(acc, v);
              }
            }
          }
          y[(pl * oh + p) * ow + q] = average ? acc / (d.kernelH() * d.kernelW()) : acc;
        }
      }
    }
    return y;
  }

  private float[] input(Geo g) {
    return h.distinct(g.n() * g.c() * g.hh() * g.ww(), 0.05f);
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("geometries")
  void maxPool(Geo g) {
    float[] x = input(g);
    CnnGradientHarness.Case c = new CnnGradientHarness.Case(h, new MaxPool2d(g.d()), g.n(),
        new int[] {g.c(), g.hh(), g.ww()}, x, TRAIN);
    CnnGradientHarness.assertClose(naive(x, g, false), h.host(c.forward()), 0, g + " forward");
    double[][] a = c.check("maxpool2d " + g);
    // Every output's gradient lands on exactly one input: the sums agree.
    double sumDy = 0;
    for (float v : c.r) {
      sumDy += v;
    }
    double sumDx = 0;
    for (double v : a[0]) {
      sumDx += v;
    }
    assertEquals(sumDy, sumDx, 1e-4);
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("geometries")
  void avgPool(Geo g) {
    float[] x = h.rand(g.n() * g.c() * g.hh() * g.ww(), -1, 1);
    CnnGradientHarness.Case c = new CnnGradientHarness.Case(h, new AvgPool2d(g.d()), g.n(),
        new int[] {g.c(), g.hh(), g.ww()}, x, TRAIN);
    CnnGradientHarness.assertClose(naive(x, g, true), h.host(c.forward()), 1e-6, g + " forward");
    c.check("avgpool2d " + g);
  }

  @ParameterizedTest(name = "batch {0}")
  @org.junit.jupiter.params.provider.ValueSource(ints = {1, 3})
  void globalAvgPool(int batch) {
    float[] x = h.rand(batch * 3 * 5 * 7, -1, 1);
    GlobalAvgPool gap = new GlobalAvgPool();
    assertArrayEquals(new int[] {3, 1, 1}, gap.outputShape(new int[] {3, 5, 7}));
    CnnGradientHarness.Case c = new CnnGradientHarness.Case(h, gap, batch, new int[] {3, 5, 7}, x, TRAIN);
    float[] y = h.host(c.forward());
    for (int p = 0; p < batch * 3; p++) {
      double s = 0;
      for (int k = 0; k < 35; k++) {
        s += x[p * 35 + k];
      }
      assertEquals(s / 35, y[p], 1e-6, "mean of plane " + p);
    }
    c.check("globalavgpool batch " + batch);
  }

  @Test
  void maxPoolTiesGoToTheFirstMaximumAndNaNPropagates() {
    // one 2x2 window of equal values, one 3x3/1 overlapping case; then a NaN
    Tensor x = h.tensor(new float[] {1, 1, 1, 1}, 1, 1, 2, 2);
    Tensor y = dev.allocate(DType.FLOAT32, 1, 1, 1, 1);
    Tensor dy = h.tensor(new float[] {5}, 1, 1, 1, 1);
    Tensor dx = dev.allocate(DType.FLOAT32, 1, 1, 2, 2);
    for (Pool2dDesc d : new Pool2dDesc[] {Pool2dDesc.of(2, 2, 0), new Pool2dDesc(2, 2, 1, 1, 0, 0)}) {
      dev.maxPool2dForward(x, y, d);
      dev.maxPool2dBackward(x, y, dy, dx, d);
      assertArrayEquals(new float[] {5, 0, 0, 0}, h.host(dx), "first maximum of " + d);
    }
    dev.upload(new float[] {1, Float.NaN, 3, 2}, 0, x);
    dev.maxPool2dForward(x, y, Pool2dDesc.of(2, 2, 0));
    assertTrue(Float.isNaN(h.host(y)[0]), "NaN propagates as in PyTorch");
  }

  @Test
  void backwardWithoutInputGradientReturnsNull() {
    MaxPool2d p = new MaxPool2d(Pool2dDesc.of(2, 2, 0));
    CnnGradientHarness.Case c = h.layerCase(p, 2, new int[] {1, 4, 4}, TRAIN);
    c.forward();
    assertNull(p.backward(c.dy, TRAIN, false));
  }

  @Test
  void shapeErrors() {
    assertEquals("maxpool2d: window 3x3 does not fit the input 2x2 with padding 0x0",
        assertThrows(IllegalArgumentException.class,
            () -> new MaxPool2d(Pool2dDesc.of(3, 1, 0)).outputShape(new int[] {1, 2, 2})).getMessage());
    assertEquals("avgpool2d expects (channels, height, width), got (16)",
        assertThrows(IllegalArgumentException.class,
            () -> new AvgPool2d(Pool2dDesc.of(2, 2, 0)).outputShape(new int[] {16})).getMessage());
    assertEquals("padding must be between 0 and half the kernel, got 2x2 for kernel 3x3",
        assertThrows(IllegalArgumentException.class, () -> Pool2dDesc.of(3, 1, 2)).getMessage());
    assertEquals("globalavgpool expects (channels, height, width), got (4, 4)",
        assertThrows(IllegalArgumentException.class,
            () -> new GlobalAvgPool().outputShape(new int[] {4, 4})).getMessage());
  }
}
