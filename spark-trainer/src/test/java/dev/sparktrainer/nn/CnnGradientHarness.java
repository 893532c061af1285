package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
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

/**
 * Finite-difference gradient checks for the convolutional layers, the same method and tolerances as
 * {@link GradientCheckTest} (whose comparison, {@link GradientCheckTest#assertGradientsMatch}, this uses):
 * L = sum(r .* layer(x)) with fixed random r, central differences with step {@value GradientCheckTest#H}
 * taken in float, for every input element and every trainable parameter element. Buffers (batch norm
 * running statistics) are not perturbed: they are not trained. Not a test class itself.
 *
 * <p>Kinks (ReLU, max pooling) are avoided by the inputs the tests choose (values far apart compared with
 * the step) rather than by skipping elements.
 */
final class CnnGradientHarness {
  static final double H = GradientCheckTest.H;

  final CpuDevice dev;
  final SplittableRandom rng;

  CnnGradientHarness(CpuDevice dev, long seed) {
    this.dev = dev;
    this.rng = new SplittableRandom(seed);
  }

  float[] rand(int n, double lo, double hi) {
    float[] a = new float[n];
    for (int k = 0; k < n; k++) {
      a[k] = (float) (lo + rng.nextDouble() * (hi - lo));
    }
    return a;
  }

  /** n distinct values spaced {@code gap} apart in random order, centred on zero: no ties within 2h. */
  float[] distinct(int n, float gap) {
    float[] a = new float[n];
    for (int k = 0; k < n; k++) {
      a[k] = (k - n / 2f) * gap;
    }
    for (int k = n - 1; k > 0; k--) {
      int j = rng.nextInt(k + 1);
      float t = a[k];
      a[k] = a[j];
      a[j] = t;
    }
    return a;
  }

  float[] host(Tensor t) {
    float[] a = new float[t.size()];
    dev.download(t, a, 0);
    return a;
  }

  Tensor tensor(float[] values, int... shape) {
    Tensor t = dev.allocate(DType.FLOAT32, shape);
    dev.upload(values, 0, t);
    return t;
  }

  /** A layer on its own flat buffers with an input batch; L = sum(r .* y). */
  static final class Case {
    final CnnGradientHarness h;
    final CpuDevice dev;
    final Layer layer;
    final ParameterSet ps;
    final int[] xShape;
    final float[] x;
    final Tensor xt;
    final float[] params;
    final Layer.Context ctx;
    final float[] r;
    final Tensor dy;

    /** Parameters: the layer's own initialisation from {@code seed}, then trainable ones randomised. */
    Case(CnnGradientHarness h, Layer layer, int batch, int[] sample, float[] x, Layer.Context ctx) {
      this.h = h;
      this.dev = h.dev;
      this.layer = layer;
      this.ctx = ctx;
      ParameterSet.Builder b = ParameterSet.builder();
      layer.declare("layer", sample, b);
      this.ps = b.build(dev);
      layer.bind(dev, ps);
      this.params = new float[ps.params().size()]; // at least 1 element, even with no parameters
      layer.initialize(ps, params, new SplittableRandom(3));
      for (ParameterSet.Entry e : ps.entries()) {
        if (e.trainable()) {
          float[] v = h.rand(Math.toIntExact(e.numel()), -1, 1);
          System.arraycopy(v, 0, params, Math.toIntExact(e.offset()), v.length);
        }
      }
      this.xShape = Shape.withBatch(batch, sample);
      this.x = x;
      assertTrue(x.length == Shape.numel(xShape), "input length");
      this.xt = dev.allocate(DType.FLOAT32, xShape);
      Tensor y = forward();
      assertArrayEquals(Shape.withBatch(batch, layer.outputShape(sample)), y.shape(), "output shape");
      this.r = h.rand(y.size(), -1, 1);
      this.dy = dev.allocate(DType.FLOAT32, y.shape());
    }

    Tensor forward() {
      dev.upload(x, 0, xt);
      dev.upload(params, 0, ps.params());
      return layer.forward(xt, ctx);
    }

    double loss() {
      float[] y = h.host(forward());
      double s = 0;
      for (int k = 0; k < y.length; k++) {
        s += (double) r[k] * y[k];
      }
      return s;
    }

    /** [0] = dL/dx, [1] = dL/d(trainable parameters), entry by entry. */
    double[][] analytic() {
      dev.fill(ps.grads(), 0f);
      forward();
      dev.upload(r, 0, dy);
      Tensor dx = layer.backward(dy, ctx, true);
      assertNotNull(dx, "backward must return dL/dx when asked");
      assertArrayEquals(xShape, dx.shape(), "dL/dx has the input's shape");
      return new double[][] {toDouble(h.host(dx)), trainable(h.host(ps.grads()))};
    }

    double[] trainable(float[] flat) {
      List<Double> out = new ArrayList<>();
      for (ParameterSet.Entry e : ps.entries()) {
        if (e.trainable()) {
          for (long k = 0; k < e.numel(); k++) {
            out.add((double) flat[Math.toIntExact(e.offset() + k)]);
          }
        }
      }
      return out.stream().mapToDouble(Double::doubleValue).toArray();
    }

    double central(float[] arr, int i) {
      float orig = arr[i];
      float plus = (float) (orig + H);
      float minus = (float) (orig - H);
      arr[i] = plus;
      double lp = loss();
      arr[i] = minus;
      double lm = loss();
      arr[i] = orig;
      return (lp - lm) / ((double) plus - (double) minus);
    }

    double[][] numeric() {
      double[] gx = new double[x.length];
      for (int i = 0; i < x.length; i++) {
        gx[i] = central(x, i);
      }
      List<Double> gp = new ArrayList<>();
      for (ParameterSet.Entry e : ps.entries()) {
        if (e.trainable()) {
          for (long k = 0; k < e.numel(); k++) {
            gp.add(central(params, Math.toIntExact(e.offset() + k)));
          }
        }
      }
      return new double[][] {gx, gp.stream().mapToDouble(Double::doubleValue).toArray()};
    }

    /** Checks dL/dx and dL/dparams against finite differences; returns the analytic ones. */
    double[][] check(String what) {
      double[][] a = analytic();
      double[][] n = numeric();
      GradientCheckTest.assertGradientsMatch(what + " dL/dx", a[0], n[0], null);
      if (ps.parameterCount() > 0) {
        GradientCheckTest.assertGradientsMatch(what + " dL/dparams", a[1], n[1], null);
      }
      return a;
    }
  }

  Case layerCase(Layer layer, int batch, int[] sample, Layer.Context ctx) {
    return new Case(this, layer, batch, sample, rand(batch * Math.toIntExact(Shape.numel(sample)), -1, 1), ctx);
  }

  static double[] toDouble(float[] a) {
    double[] d = new double[a.length];
    for (int k = 0; k < a.length; k++) {
      d[k] = a[k];
    }
    return d;
  }

  /** max |a - b| <= tol * max(1, max |b|). */
  static void assertClose(double[] want, float[] got, double tol, String what) {
    assertTrue(want.length == got.length, what + ": lengths " + want.length + " vs " + got.length);
    double scale = 1;
    for (double v : want) {
      scale = Math.max(scale, Math.abs(v));
    }
    for (int k = 0; k < want.length; k++) {
      if (!(Math.abs(want[k] - got[k]) <= tol * scale)) {
        throw new AssertionError(what + "[" + k + "]: want " + want[k] + ", got " + got[k] + " (tolerance "
            + tol * scale + ")\n want " + Arrays.toString(Arrays.copyOf(want, Math.min(want.length, 20))));
      }
    }
  }
}
