package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.function.Supplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Analytic backward vs central finite differences on the CPU backend.
 *
 * <p>A layer's output y is turned into a scalar L = sum(r .* y) with fixed random r (so dL/dy = r), summed in
 * double from the float outputs. Each input or parameter element is moved by +-{@value #H} in float; the
 * numeric derivative is (L+ - L-) / (x+ - x-) with the step actually taken after float rounding.
 *
 * <p>Tolerance (float32 engine): every element must satisfy |a - n| <= {@value #ATOL} + {@value #RTOL} *
 * max(|a|, |n|), and the whole vector ||a - n|| <= {@value #NORM_RTOL} * max(||a||, ||n||). The rounding error
 * of L is about 1e-6, i.e. ~1e-4 after dividing by 2h, and the truncation error h^2/6 f''' is below 1e-4 for
 * these smooth functions, so the bounds leave a wide margin yet reject a sign flip, a 10 % scale error, a
 * transposed weight gradient or one wrong element (see {@link #comparisonRejectsWrongGradients}).
 */
class GradientCheckTest {
  static final double H = 1e-2;
  static final double RTOL = 2e-2;
  static final double ATOL = 1e-3;
  static final double NORM_RTOL = 1e-2;

  private final CpuDevice dev = new CpuDevice();
  private final SplittableRandom rng = new SplittableRandom(20240611L);

  @AfterEach
  void close() {
    dev.close();
  }

  // ---- the comparison ----

  /** null when analytic and numeric agree within the stated tolerance, else what is wrong. */
  static String mismatch(double[] analytic, double[] numeric, boolean[] skip) {
    if (analytic.length != numeric.length) {
      return "lengths differ: " + analytic.length + " vs " + numeric.length;
    }
    double diff2 = 0;
    double a2 = 0;
    double n2 = 0;
    for (int k = 0; k < analytic.length; k++) {
      if (skip != null && skip[k]) {
        continue;
      }
      double a = analytic[k];
      double n = numeric[k];
      if (!Double.isFinite(a) || Math.abs(a - n) > ATOL + RTOL * Math.max(Math.abs(a), Math.abs(n))) {
        return "element " + k + ": analytic " + a + ", numeric " + n;
      }
      diff2 += (a - n) * (a - n);
      a2 += a * a;
      n2 += n * n;
    }
    double rel = Math.sqrt(diff2) / Math.max(Math.sqrt(Math.max(a2, n2)), 1e-12);
    if (rel > NORM_RTOL) {
      return "relative norm error " + rel;
    }
    if (Math.sqrt(n2) < 1e-3) {
      return "numeric gradient is ~0 (norm " + Math.sqrt(n2) + "): the check would prove nothing";
    }
    return null;
  }

  static void assertGradientsMatch(String what, double[] analytic, double[] numeric, boolean[] skip) {
    String m = mismatch(analytic, numeric, skip);
    assertNull(m, what + ": " + m + "\n analytic " + Arrays.toString(analytic) + "\n numeric  "
        + Arrays.toString(numeric));
  }

  // ---- the harness ----

  private float[] rand(int n, double lo, double hi) {
    float[] a = new float[n];
    for (int k = 0; k < n; k++) {
      a[k] = (float) (lo + rng.nextDouble() * (hi - lo));
    }
    return a;
  }

  /** Random values with |v| in [0.1, 1] and a random sign: safe inputs for ReLU with h = 0.01. */
  private float[] randAwayFromZero(int n) {
    float[] a = rand(n, 0.1, 1.0);
    for (int k = 0; k < n; k++) {
      if (rng.nextBoolean()) {
        a[k] = -a[k];
      }
    }
    return a;
  }

  private float[] host(Tensor t) {
    float[] a = new float[t.size()];
    dev.download(t, a, 0);
    return a;
  }

  /** An identity layer that records the sign pattern of what flows through it (to see ReLU kinks). */
  static final class Probe extends Layer {
    boolean[] positive;

    @Override
    public int[] outputShape(int[] inputShape) {
      return inputShape.clone();
    }

    @Override
    public Tensor forward(Tensor x, Context ctx) {
      float[] h = new float[x.size()];
      device.download(x, h, 0);
      positive = new boolean[h.length];
      for (int k = 0; k < h.length; k++) {
        positive[k] = h[k] > 0;
      }
      return x;
    }

    @Override
    public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
      return needInputGrad ? dy : null;
    }
  }

  /** A layer bound to its own flat buffers, an input batch, and L = sum(r .* layer(x)). */
  private final class Case {
    final Layer layer;
    final ParameterSet ps;
    final int[] xShape;
    final float[] x;
    final Tensor xt;
    final float[] params;
    final Layer.Context ctx;
    final List<Probe> probes;
    final float[] r;
    final Tensor dy;

    Case(Layer layer, int batch, int[] sample, float[] x, Layer.Context ctx, List<Probe> probes) {
      this.layer = layer;
      this.ctx = ctx;
      this.probes = probes;
      ParameterSet.Builder b = ParameterSet.builder();
      layer.declare("layer", sample, b);
      this.ps = b.build(dev);
      layer.bind(dev, ps);
      this.params = rand(Math.toIntExact(ps.params().numel()), -1, 1);
      dev.upload(params, 0, ps.params());
      this.xShape = Shape.withBatch(batch, sample);
      this.x = x;
      this.xt = dev.allocate(DType.FLOAT32, xShape);
      Tensor y = forward();
      assertArrayEquals(Shape.withBatch(batch, layer.outputShape(sample)), y.shape(), "output shape");
      this.r = rand(y.size(), -1, 1);
      this.dy = dev.allocate(DType.FLOAT32, y.shape());
    }

    Tensor forward() {
      dev.upload(x, 0, xt);
      dev.upload(params, 0, ps.params());
      return layer.forward(xt, ctx);
    }

    double loss() {
      float[] y = host(forward());
      double s = 0;
      for (int k = 0; k < y.length; k++) {
        s += (double) r[k] * y[k];
      }
      return s;
    }

    boolean[] signature() {
      List<Boolean> all = new ArrayList<>();
      for (Probe p : probes) {
        for (boolean v : p.positive) {
          all.add(v);
        }
      }
      boolean[] out = new boolean[all.size()];
      for (int k = 0; k < out.length; k++) {
        out[k] = all.get(k);
      }
      return out;
    }

    /** Analytic gradients: [0] = dL/dx, [1] = dL/dparams (the real elements of every entry, in order). */
    double[][] analytic() {
      dev.fill(ps.grads(), 0f);
      forward();
      dev.upload(r, 0, dy);
      Tensor dx = layer.backward(dy, ctx, true);
      assertNotNull(dx, "backward must return dL/dx when asked");
      assertArrayEquals(xShape, dx.shape(), "dL/dx has the input's shape");
      return new double[][] {toDouble(host(dx)), realElements(host(ps.grads()))};
    }

    double[] realElements(float[] flat) {
      int n = Math.toIntExact(ps.parameterCount());
      double[] out = new double[n];
      int j = 0;
      for (ParameterSet.Entry e : ps.entries()) {
        for (long k = 0; k < e.numel(); k++) {
          out[j++] = flat[Math.toIntExact(e.offset() + k)];
        }
      }
      return out;
    }

    /** Central difference of L over one float element; marks it skipped when a ReLU input changed sign. */
    double central(float[] arr, int i, boolean[] baseSig, boolean[] skip, int skipIndex) {
      float orig = arr[i];
      float plus = (float) (orig + H);
      float minus = (float) (orig - H);
      arr[i] = plus;
      double lp = loss();
      boolean crossed = !Arrays.equals(baseSig, signature());
      arr[i] = minus;
      double lm = loss();
      crossed |= !Arrays.equals(baseSig, signature());
      arr[i] = orig;
      if (crossed) {
        skip[skipIndex] = true;
      }
      return (lp - lm) / ((double) plus - (double) minus);
    }

    /** Numeric gradients, same layout as {@link #analytic}; skip[0], skip[1] collect kink crossings. */
    double[][] numeric(boolean[][] skip) {
      loss();
      boolean[] base = signature();
      double[] gx = new double[x.length];
      skip[0] = new boolean[x.length];
      for (int i = 0; i < x.length; i++) {
        gx[i] = central(x, i, base, skip[0], i);
      }
      int n = Math.toIntExact(ps.parameterCount());
      double[] gp = new double[n];
      skip[1] = new boolean[n];
      int j = 0;
      for (ParameterSet.Entry e : ps.entries()) {
        for (long k = 0; k < e.numel(); k++, j++) {
          gp[j] = central(params, Math.toIntExact(e.offset() + k), base, skip[1], j);
        }
      }
      return new double[][] {gx, gp};
    }

    /** Runs the whole check (input and parameter gradients) and returns the analytic gradients. */
    double[][] check(String what) {
      double[][] a = analytic();
      boolean[][] skip = new boolean[2][];
      double[][] n = numeric(skip);
      for (int s = 0; s < 2; s++) {
        int skipped = 0;
        for (boolean b : skip[s]) {
          skipped += b ? 1 : 0;
        }
        assertTrue(skipped <= skip[s].length / 10, what + ": too many ReLU kink crossings: " + skipped);
      }
      assertGradientsMatch(what + " dL/dx", a[0], n[0], skip[0]);
      if (ps.parameterCount() > 0) {
        assertGradientsMatch(what + " dL/dparams", a[1], n[1], skip[1]);
      } else {
        assertEquals(0, a[1].length);
      }
      return a;
    }
  }

  private static double[] toDouble(float[] a) {
    double[] d = new double[a.length];
    for (int k = 0; k < a.length; k++) {
      d[k] = a[k];
    }
    return d;
  }

  private static final Layer.Context TRAIN = new Layer.Context(true, 99L, 5L);
  private static final Layer.Context EVAL = new Layer.Context(false, 99L, 5L);

  private Case layerCase(Layer layer, int batch, int... sample) {
    int n = batch * Math.toIntExact(Shape.numel(sample));
    return new Case(layer, batch, sample, rand(n, -1, 1), TRAIN, List.of());
  }

  // ---- layers ----

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void linearWithBias(int batch) {
    Case c = layerCase(new Linear(3, true), batch, 4);
    assertEquals(List.of("layer.weight", "layer.bias"), c.ps.entries().stream().map(ParameterSet.Entry::name).toList());
    c.check("linear+bias batch " + batch);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void linearWithoutBias(int batch) {
    Case c = layerCase(new Linear(5, false), batch, 3);
    assertEquals(1, c.ps.entries().size());
    assertEquals(15, c.ps.parameterCount());
    c.check("linear batch " + batch);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void relu(int batch) {
    Case c = new Case(new Activation(Activation.Kind.RELU), batch, new int[] {6}, randAwayFromZero(batch * 6),
        TRAIN, List.of());
    c.check("relu batch " + batch);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void gelu(int batch) {
    Case c = new Case(new Activation(Activation.Kind.GELU), batch, new int[] {6}, rand(batch * 6, -3, 3), TRAIN,
        List.of());
    c.check("gelu batch " + batch);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void dropoutInTrainingMode(int batch) {
    Case c = layerCase(new Dropout(0.3f), batch, 16);
    float[] y = host(c.forward());
    int dropped = 0;
    for (float v : y) {
      dropped += v == 0f ? 1 : 0;
    }
    assertTrue(dropped > 0 && dropped < y.length, "the mask drops some elements and keeps others: " + dropped);
    assertArrayEquals(y, host(c.forward()), "same seed and step -> same mask");
    double[][] a = c.check("dropout batch " + batch);
    for (int k = 0; k < y.length; k++) {
      assertEquals(y[k] == 0f, a[0][k] == 0.0, "backward uses forward's mask at " + k);
    }
    // Another step draws another mask.
    Layer.Context next = new Layer.Context(true, 99L, 6L);
    float[] y2 = host(c.layer.forward(c.xt, next));
    assertTrue(!Arrays.equals(y, y2), "another step, another mask");
  }

  @Test
  void dropoutIsIdentityInEvaluation() {
    Dropout d = new Dropout(0.5f);
    Case c = layerCase(d, 3, 4);
    Tensor y = d.forward(c.xt, EVAL);
    assertSame(c.xt, y);
    assertSame(c.dy, d.backward(c.dy, EVAL, true));
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void flatten(int batch) {
    Case c = layerCase(new Flatten(), batch, 2, 3);
    assertArrayEquals(new int[] {batch, 6}, c.forward().shape());
    c.check("flatten batch " + batch);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void sequentialMlp(int batch) {
    Probe probe = new Probe();
    Sequential net = new Sequential(List.of(new Flatten(), new Linear(8, true), new Activation(Activation.Kind.GELU),
        new Dropout(0.2f), new Linear(6, false), probe, new Activation(Activation.Kind.RELU),
        new Linear(4, true)));
    Case c = new Case(net, batch, new int[] {2, 3}, rand(batch * 6, -1, 1), TRAIN, List.of(probe));
    assertEquals(List.of("layer.1.linear.weight", "layer.1.linear.bias", "layer.4.linear.weight",
        "layer.7.linear.weight", "layer.7.linear.bias"),
        c.ps.entries().stream().map(ParameterSet.Entry::name).toList());
    c.check("mlp batch " + batch);
  }

  @Test
  void backwardAccumulatesParameterGradientsAndSkipsInputGradWhenNotNeeded() {
    Case c = layerCase(new Linear(3, true), 3, 4);
    double[][] once = c.analytic();
    c.forward();
    Tensor dx = c.layer.backward(c.dy, c.ctx, false); // grads += again, no dx
    assertNull(dx);
    double[] twice = c.realElements(host(c.ps.grads()));
    for (int k = 0; k < twice.length; k++) {
      assertEquals(2 * once[1][k], twice[k], 1e-5, "gradient " + k + " accumulates (+=)");
    }
  }

  // ---- losses ----

  /** L = gradScale * sum(losses) vs the fused dL/dout. */
  private void checkLoss(Loss loss, int batch, int cols, Supplier<Tensor> target) {
    float gradScale = 1f / batch;
    float[] z = rand(batch * cols, -2, 2);
    Tensor zt = dev.allocate(DType.FLOAT32, batch, cols);
    Tensor tt = target.get();
    Tensor losses = dev.allocate(DType.FLOAT32, batch);
    Tensor dz = dev.allocate(DType.FLOAT32, batch, cols);
    dev.upload(z, 0, zt);
    loss.compute(dev, zt, tt, losses, dz, gradScale);
    double[] analytic = toDouble(host(dz));
    double[] numeric = new double[z.length];
    for (int i = 0; i < z.length; i++) {
      float orig = z[i];
      float plus = (float) (orig + H);
      float minus = (float) (orig - H);
      z[i] = plus;
      dev.upload(z, 0, zt);
      loss.compute(dev, zt, tt, losses, null, gradScale);
      double lp = gradScale * dev.sum(losses);
      z[i] = minus;
      dev.upload(z, 0, zt);
      loss.compute(dev, zt, tt, losses, null, gradScale);
      double lm = gradScale * dev.sum(losses);
      z[i] = orig;
      numeric[i] = (lp - lm) / ((double) plus - (double) minus);
    }
    assertGradientsMatch(loss + " batch " + batch, analytic, numeric, null);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void softmaxCrossEntropy(int batch) {
    int cols = 5;
    checkLoss(Loss.CROSS_ENTROPY, batch, cols, () -> {
      int[] labels = new int[batch];
      for (int k = 0; k < batch; k++) {
        labels[k] = rng.nextInt(cols);
      }
      Tensor t = dev.allocate(DType.INT32, batch);
      dev.upload(labels, 0, t);
      return t;
    });
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void meanSquaredError(int batch) {
    int cols = 4;
    checkLoss(Loss.MSE, batch, cols, () -> {
      Tensor t = dev.allocate(DType.FLOAT32, batch, cols);
      dev.upload(rand(batch * cols, -2, 2), 0, t);
      return t;
    });
  }

  /** The whole model path: ModelSpec.mlp -> Model -> cross-entropy -> Model.backward, parameter gradients. */
  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void modelWithCrossEntropy(int batch) {
    Model model = new Model(ModelSpec.mlp(6, new int[] {8, 5}, 4, "gelu", 0.25f), dev);
    model.initialize(7L);
    ParameterSet ps = model.parameters();
    float[] params = model.parametersToHost();
    Tensor x = dev.allocate(DType.FLOAT32, batch, 6);
    dev.upload(rand(batch * 6, -1, 1), 0, x);
    Tensor labels = dev.allocate(DType.INT32, batch);
    int[] lab = new int[batch];
    for (int k = 0; k < batch; k++) {
      lab[k] = rng.nextInt(4);
    }
    dev.upload(lab, 0, labels);
    Tensor losses = dev.allocate(DType.FLOAT32, batch);
    Tensor dout = dev.allocate(DType.FLOAT32, batch, 4);
    float scale = 1f / batch;

    model.zeroGrad();
    Tensor out = model.forward(x, TRAIN);
    Loss.CROSS_ENTROPY.compute(dev, out, labels, losses, dout, scale);
    model.backward(dout, TRAIN);
    float[] g = host(ps.grads());

    List<Double> a = new ArrayList<>();
    List<Double> n = new ArrayList<>();
    for (ParameterSet.Entry e : ps.entries()) {
      for (long k = 0; k < e.numel(); k++) {
        int i = Math.toIntExact(e.offset() + k);
        a.add((double) g[i]);
        float orig = params[i];
        float plus = (float) (orig + H);
        float minus = (float) (orig - H);
        params[i] = plus;
        model.loadParameters(params);
        Loss.CROSS_ENTROPY.compute(dev, model.forward(x, TRAIN), labels, losses, null, scale);
        double lp = scale * dev.sum(losses);
        params[i] = minus;
        model.loadParameters(params);
        Loss.CROSS_ENTROPY.compute(dev, model.forward(x, TRAIN), labels, losses, null, scale);
        double lm = scale * dev.sum(losses);
        params[i] = orig;
        n.add((lp - lm) / ((double) plus - (double) minus));
      }
    }
    model.loadParameters(params);
    assertEquals(6 * 8 + 8 + 8 * 5 + 5 + 5 * 4 + 4, a.size());
    assertGradientsMatch("model batch " + batch, a.stream().mapToDouble(Double::doubleValue).toArray(),
        n.stream().mapToDouble(Double::doubleValue).toArray(), null);
  }

  // ---- negative controls: the comparison can fail ----

  @Test
  void comparisonRejectsWrongGradients() {
    Case c = layerCase(new Linear(4, true), 3, 3);
    double[][] a = c.analytic();
    double[][] n = c.numeric(new boolean[2][]);
    assertNull(mismatch(a[1], n[1], null), "the true gradient passes");

    double[] flipped = Arrays.stream(a[1]).map(v -> -v).toArray();
    assertNotNull(mismatch(flipped, n[1], null), "a sign flip must fail");

    double[] scaled = Arrays.stream(a[1]).map(v -> 1.1 * v).toArray();
    assertNotNull(mismatch(scaled, n[1], null), "a 10% scale error must fail");

    // dW laid out (in, out) instead of (out, in): the first 12 elements are W's gradient (4 x 3).
    double[] transposed = a[1].clone();
    for (int o = 0; o < 4; o++) {
      for (int i = 0; i < 3; i++) {
        transposed[i * 4 + o] = a[1][o * 3 + i];
      }
    }
    assertNotNull(mismatch(transposed, n[1], null), "a transposed weight gradient must fail");

    double[] oneWrong = a[1].clone();
    oneWrong[5] += 0.05;
    assertNotNull(mismatch(oneWrong, n[1], null), "one wrong element must fail");

    double[] missingBias = a[1].clone();
    Arrays.fill(missingBias, 12, 16, 0.0);
    assertNotNull(mismatch(missingBias, n[1], null), "a missing bias gradient must fail");

    assertNotNull(mismatch(new double[4], new double[4], null), "an all-zero gradient proves nothing");
    double[] nan = a[0].clone();
    nan[0] = Double.NaN;
    assertNotNull(mismatch(nan, n[0], null), "NaN must fail");
  }
}
