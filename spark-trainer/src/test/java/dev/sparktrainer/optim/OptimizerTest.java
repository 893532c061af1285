package dev.sparktrainer.optim;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The fused optimizers over a flat ParameterSet vs torch.optim.SGD / torch.optim.AdamW computed by hand in
 * double. The hyper-parameters are rounded to float first (the device receives floats), so the only
 * difference left is float32 arithmetic: every element must agree within 1e-6 relative to the largest
 * element of its buffer (a few float ulps; the smallest formula error these cases can produce is ~1e-3).
 */
class OptimizerTest {
  private static final double TOL = 1e-6;
  private static final double[] LRS = {0.1, 0.05, 0.02};

  private CpuDevice dev;
  private ParameterSet ps;
  private int n;
  private final SplittableRandom rng = new SplittableRandom(5);

  @BeforeEach
  void setUp() {
    dev = new CpuDevice();
    ParameterSet.Builder b = ParameterSet.builder();
    b.add("w", 3, 5); // (3, 5) at 0
    b.add("b", 7); // (7) at 64
    ps = b.build(dev);
    n = Math.toIntExact(ps.totalElements());
    assertEquals(128, n);
  }

  @AfterEach
  void tearDown() {
    dev.close();
  }

  private float[] rand() {
    float[] a = new float[n];
    for (int k = 0; k < n; k++) {
      a[k] = (float) (rng.nextDouble() * 2 - 1);
    }
    return a;
  }

  private float[] host(Tensor t) {
    float[] a = new float[t.size()];
    dev.download(t, a, 0);
    return a;
  }

  private static double f(double hyper) {
    return (float) hyper;
  }

  private static void assertBufferClose(double[] want, float[] got, String what) {
    assertEquals(want.length, got.length, what + ": length");
    double max = 0;
    for (double v : want) {
      max = Math.max(max, Math.abs(v));
    }
    for (int k = 0; k < want.length; k++) {
      double tol = TOL * Math.max(Math.abs(want[k]), max);
      assertTrue(Math.abs(want[k] - got[k]) <= tol,
          what + "[" + k + "]: want " + want[k] + ", got " + got[k] + " (tolerance " + tol + ")");
    }
  }

  private static double[] toDouble(float[] a) {
    double[] d = new double[a.length];
    for (int k = 0; k < a.length; k++) {
      d[k] = a[k];
    }
    return d;
  }

  /** Three SGD steps with different gradients and learning rates vs torch.optim.SGD (dampening 0). */
  private void checkSgd(double momentum, boolean nesterov, double wd) {
    OptimizerConfig cfg = OptimizerConfig.sgd(0.1).withMomentum(momentum).withNesterov(nesterov).withWeightDecay(wd);
    Optimizer opt = cfg.create(dev, ps);
    float[] p0 = rand();
    dev.upload(p0, 0, ps.params());
    double[] p = toDouble(p0);
    double[] buf = new double[n];
    double mom = f(momentum);
    double decay = f(wd);
    for (int t = 0; t < 3; t++) {
      float[] g = rand();
      dev.upload(g, 0, ps.grads());
      opt.step(LRS[t]);
      double lr = f(LRS[t]);
      for (int k = 0; k < n; k++) {
        double d = g[k] + decay * p[k];
        if (mom != 0) {
          buf[k] = t == 0 ? d : mom * buf[k] + d;
          d = nesterov ? d + mom * buf[k] : buf[k];
        }
        p[k] -= lr * d;
      }
      String what = "sgd(momentum=" + momentum + ", nesterov=" + nesterov + ", wd=" + wd + ") step " + (t + 1);
      assertBufferClose(p, host(ps.params()), what + " params");
      if (mom != 0) {
        assertBufferClose(buf, host(opt.state().get("momentum")), what + " momentum buffer");
      }
      assertEquals(t + 1, opt.steps());
    }
  }

  @Test
  void sgdPlain() {
    checkSgd(0, false, 0);
  }

  @Test
  void sgdMomentum() {
    checkSgd(0.9, false, 0);
  }

  @Test
  void sgdMomentumNesterov() {
    checkSgd(0.9, true, 0);
  }

  @Test
  void sgdWeightDecay() {
    checkSgd(0, false, 0.1);
  }

  @Test
  void sgdEverything() {
    checkSgd(0.8, true, 0.05);
  }

  /** Three AdamW steps vs torch.optim.AdamW (decoupled decay, bias correction with t = 1, 2, 3). */
  private void checkAdamw(double b1, double b2, double eps, double wd) {
    OptimizerConfig cfg = OptimizerConfig.adamw(1e-3).withBetas(b1, b2).withEps(eps).withWeightDecay(wd);
    Optimizer opt = cfg.create(dev, ps);
    assertEquals(List.of("m", "v"), List.copyOf(opt.state().keySet()));
    float[] p0 = rand();
    dev.upload(p0, 0, ps.params());
    double[] p = toDouble(p0);
    double[] m = new double[n];
    double[] v = new double[n];
    double beta1 = f(b1);
    double beta2 = f(b2);
    double e = f(eps);
    double decay = f(wd);
    for (int t = 1; t <= 3; t++) {
      float[] g = rand();
      dev.upload(g, 0, ps.grads());
      opt.step(LRS[t - 1]);
      double lr = f(LRS[t - 1]);
      double bc1 = 1 - Math.pow(beta1, t);
      double bc2 = 1 - Math.pow(beta2, t);
      for (int k = 0; k < n; k++) {
        p[k] *= 1 - lr * decay;
        m[k] = beta1 * m[k] + (1 - beta1) * g[k];
        v[k] = beta2 * v[k] + (1 - beta2) * g[k] * g[k];
        double stepSize = lr / bc1;
        double denom = Math.sqrt(v[k]) / Math.sqrt(bc2) + e;
        p[k] -= stepSize * m[k] / denom;
      }
      String what = "adamw(" + b1 + ", " + b2 + ", eps=" + eps + ", wd=" + wd + ") step " + t;
      assertBufferClose(p, host(ps.params()), what + " params");
      assertBufferClose(m, host(opt.state().get("m")), what + " m");
      assertBufferClose(v, host(opt.state().get("v")), what + " v");
      assertEquals(t, opt.steps());
    }
  }

  @Test
  void adamwDefaults() {
    checkAdamw(0.9, 0.999, 1e-8, 0.01);
  }

  @Test
  void adamwLargeEpsAndDecay() {
    // eps = 1e-3 makes where eps is added visible; wd = 0.1 makes the decoupled decay visible.
    checkAdamw(0.8, 0.99, 1e-3, 0.1);
  }

  @Test
  void adamwNoDecay() {
    checkAdamw(0.5, 0.9, 1e-8, 0);
  }

  // ---- one fused call over the whole flat buffer ----

  private void uniform(float params, float grads) {
    float[] a = new float[n];
    java.util.Arrays.fill(a, params);
    dev.upload(a, 0, ps.params());
    java.util.Arrays.fill(a, grads);
    dev.upload(a, 0, ps.grads());
  }

  private void assertAll(float want, Tensor t, String what) {
    float[] h = host(t);
    assertEquals(n, h.length, what + ": state has the parameters' layout");
    for (int k = 0; k < h.length; k++) {
      assertEquals(want, h[k], 1e-7f, what + " at flat index " + k);
    }
  }

  @Test
  void oneStepTouchesEveryElementOnce() {
    // Touched twice would give 0.5, never 1.0; padding between the tensors is part of the flat buffer too.
    Optimizer sgd = OptimizerConfig.sgd(0.1).create(dev, ps);
    assertTrue(sgd.state().isEmpty(), "plain SGD keeps no state");
    uniform(1f, 1f);
    sgd.step(0.25);
    assertAll(0.75f, ps.params(), "sgd params");

    Optimizer mom = OptimizerConfig.sgd(0.1).withMomentum(0.5).create(dev, ps);
    uniform(1f, 1f);
    mom.step(0.25);
    assertAll(0.75f, ps.params(), "momentum params after step 1");
    assertAll(1f, mom.state().get("momentum"), "momentum buffer after step 1");
    mom.step(0.25);
    assertAll(0.375f, ps.params(), "momentum params after step 2");
    assertAll(1.5f, mom.state().get("momentum"), "momentum buffer after step 2");

    Optimizer adamw = OptimizerConfig.adamw(1e-3).withWeightDecay(0).create(dev, ps);
    uniform(1f, 1f);
    adamw.step(0.25);
    assertAll(0.1f, adamw.state().get("m"), "adamw m");
    assertAll(0.001f, adamw.state().get("v"), "adamw v");
    assertAll(0.75f, ps.params(), "adamw params (|update| = lr at t = 1)");
  }

  @Test
  void stepCounterDrivesFirstStepAndBiasCorrection() {
    Optimizer mom = OptimizerConfig.sgd(0.1).withMomentum(0.5).create(dev, ps);
    uniform(1f, 1f);
    mom.step(0.25);
    mom.setSteps(0); // as if fresh: buf = g again
    mom.step(0.25);
    assertAll(1f, mom.state().get("momentum"), "buffer restarts at step 0");
    mom.setSteps(5); // as if resumed: buf = m * buf + g
    mom.step(0.25);
    assertAll(1.5f, mom.state().get("momentum"), "buffer continues after a resume");
    assertEquals(6, mom.steps());
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> mom.setSteps(-1));
    assertEquals("optimizer steps must be >= 0, got -1", e.getMessage());
    assertNull(OptimizerConfig.sgd(0.1).create(dev, ps).state().get("momentum"));
  }
}
