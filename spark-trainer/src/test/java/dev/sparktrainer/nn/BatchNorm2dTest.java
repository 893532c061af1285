package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.checkpoint.CheckpointData;
import dev.sparktrainer.checkpoint.Checkpoints;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.optim.Optimizer;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * BatchNorm2d on the CPU: the forward against torch.nn.BatchNorm2d's definition (computed here in double),
 * running statistics (unbiased variance, momentum), evaluation mode, gradients against finite differences,
 * and the running statistics as buffers: laid out after the trainable parameters, untouched by the optimizer
 * (weight decay included), carried by checkpoints.
 */
class BatchNorm2dTest {
  private static final Layer.Context TRAIN = new Layer.Context(true, 1L, 1L);
  private static final Layer.Context EVAL = new Layer.Context(false, 1L, 1L);
  private final CpuDevice dev = new CpuDevice();
  private final CnnGradientHarness h = new CnnGradientHarness(dev, 99L);

  @AfterEach
  void close() {
    dev.close();
  }

  /** Per-channel mean and biased variance of x (n, c, s) in double. */
  private static double[][] stats(float[] x, int n, int c, int s) {
    double[] mean = new double[c];
    double[] var = new double[c];
    for (int ch = 0; ch < c; ch++) {
      for (int b = 0; b < n; b++) {
        for (int j = 0; j < s; j++) {
          mean[ch] += x[(b * c + ch) * s + j];
        }
      }
      mean[ch] /= (double) n * s;
      for (int b = 0; b < n; b++) {
        for (int j = 0; j < s; j++) {
          double d = x[(b * c + ch) * s + j] - mean[ch];
          var[ch] += d * d;
        }
      }
      var[ch] /= (double) n * s;
    }
    return new double[][] {mean, var};
  }

  private float[] entry(CnnGradientHarness.Case c, String name) {
    ParameterSet.Entry e = c.ps.entries().get(c.ps.indexOf(name));
    float[] all = h.host(c.ps.params());
    return Arrays.copyOfRange(all, (int) e.offset(), (int) (e.offset() + e.numel()));
  }

  private static float[] hostEntry(CnnGradientHarness.Case c, String name) {
    ParameterSet.Entry e = c.ps.entries().get(c.ps.indexOf(name));
    return Arrays.copyOfRange(c.params, (int) e.offset(), (int) (e.offset() + e.numel()));
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void trainingForwardAndRunningStatistics(int batch) {
    int c = 3;
    int s = 4 * 5;
    BatchNorm2d bn = new BatchNorm2d(0.25f, 1e-3f);
    float[] x = h.rand(batch * c * s, -2, 3);
    CnnGradientHarness.Case k = new CnnGradientHarness.Case(h, bn, batch, new int[] {c, 4, 5}, x, TRAIN);
    // The initial values (the Case's host copy); forward() uploads them before it runs.
    assertArrayEquals(new float[] {0, 0, 0}, hostEntry(k, "layer.running_mean"));
    assertArrayEquals(new float[] {1, 1, 1}, hostEntry(k, "layer.running_var"));
    float[] y = h.host(k.forward());
    float[] gamma = entry(k, "layer.weight");
    float[] beta = entry(k, "layer.bias");
    double[][] st = stats(x, batch, c, s);
    double[] want = new double[y.length];
    for (int b = 0; b < batch; b++) {
      for (int ch = 0; ch < c; ch++) {
        for (int j = 0; j < s; j++) {
          int i = (b * c + ch) * s + j;
          want[i] = (x[i] - st[0][ch]) / Math.sqrt(st[1][ch] + 1e-3) * gamma[ch] + beta[ch];
        }
      }
    }
    CnnGradientHarness.assertClose(want, y, 1e-5, "y");
    // running = (1 - momentum) * running + momentum * stat; the variance unbiased (M / (M - 1))
    float[] rm = entry(k, "layer.running_mean");
    float[] rv = entry(k, "layer.running_var");
    double m = (double) batch * s;
    for (int ch = 0; ch < c; ch++) {
      assertEquals(0.25 * st[0][ch], rm[ch], 1e-6, "running mean " + ch);
      assertEquals(0.75 + 0.25 * st[1][ch] * m / (m - 1), rv[ch], 1e-5, "running var " + ch);
    }
  }

  @Test
  void evaluationUsesRunningStatistics() {
    BatchNorm2d bn = new BatchNorm2d(0.1f, 1e-5f);
    float[] x = h.rand(2 * 2 * 3 * 3, -1, 1);
    CnnGradientHarness.Case k = new CnnGradientHarness.Case(h, bn, 2, new int[] {2, 3, 3}, x, EVAL);
    float[] host = h.host(k.ps.params());
    ParameterSet ps = k.ps;
    float[] mean = {0.5f, -1f};
    float[] var = {4f, 0.25f};
    System.arraycopy(mean, 0, k.params, (int) ps.entries().get(ps.indexOf("layer.running_mean")).offset(), 2);
    System.arraycopy(var, 0, k.params, (int) ps.entries().get(ps.indexOf("layer.running_var")).offset(), 2);
    float[] before = k.params.clone();
    float[] y = h.host(k.forward());
    float[] gamma = entry(k, "layer.weight");
    float[] beta = entry(k, "layer.bias");
    for (int i = 0; i < x.length; i++) {
      int ch = (i / 9) % 2;
      assertEquals((x[i] - mean[ch]) / Math.sqrt(var[ch] + 1e-5) * gamma[ch] + beta[ch], y[i], 1e-5);
    }
    assertArrayEquals(before, h.host(k.ps.params()), "evaluation changes no statistics");
    assertTrue(host.length > 0);
    assertThrows(IllegalStateException.class, () -> bn.backward(k.dy, EVAL, true));
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3, 7})
  void gradients(int batch) {
    BatchNorm2d bn = new BatchNorm2d(0.1f, 1e-5f);
    CnnGradientHarness.Case c = h.layerCase(bn, batch, new int[] {3, 3, 2}, TRAIN);
    assertEquals(List.of("layer.weight", "layer.bias", "layer.running_mean", "layer.running_var"),
        c.ps.entries().stream().map(ParameterSet.Entry::name).toList());
    c.check("batchnorm2d batch " + batch);
  }

  @Test
  void gradientsForFlatFeatures() {
    // (N, C) input: BatchNorm1d's case; statistics over the batch only
    CnnGradientHarness.Case c = h.layerCase(new BatchNorm2d(0.1f, 1e-5f), 5, new int[] {4}, TRAIN);
    c.check("batchnorm over (N, C)");
  }

  @Test
  void backwardWithoutInputGradientStillAccumulatesParameterGradients() {
    CnnGradientHarness.Case c = h.layerCase(new BatchNorm2d(0.1f, 1e-5f), 3, new int[] {2, 2, 2}, TRAIN);
    double[][] once = c.analytic();
    c.forward();
    assertNull(c.layer.backward(c.dy, TRAIN, false));
    double[] twice = c.trainable(h.host(c.ps.grads()));
    for (int k = 0; k < twice.length; k++) {
      assertEquals(2 * once[1][k], twice[k], 1e-5);
    }
  }

  @Test
  void oneValuePerChannelCannotTrain() {
    CnnGradientHarness.Case c = h.layerCase(new BatchNorm2d(0.1f, 1e-5f), 2, new int[] {3, 1, 1}, EVAL);
    Tensor one = dev.allocate(DType.FLOAT32, 1, 3, 1, 1);
    String m = assertThrows(IllegalArgumentException.class, () -> c.layer.forward(one, TRAIN)).getMessage();
    assertEquals("batchNormForwardTraining: training needs more than one value per channel, got "
        + "float32(1, 3, 1, 1)@cpu; use a larger batch, or evaluation mode", m);
    assertEquals("batchnorm2d: momentum must be in [0, 1], got 1.5",
        assertThrows(IllegalArgumentException.class, () -> new BatchNorm2d(1.5f, 1e-5f)).getMessage());
    assertEquals("batchnorm2d: eps must be > 0, got 0.0",
        assertThrows(IllegalArgumentException.class, () -> new BatchNorm2d(0.1f, 0f)).getMessage());
  }

  // ---- running statistics as buffers ----

  private static final ModelSpec NET = ModelSpec.builder().input(2, 4, 4).conv2d(3, 3, 1, 1).batchNorm2d().relu()
      .flatten().linear(5).batchNorm2d(0.2f, 1e-4f).linear(2).build();

  @Test
  void buffersComeAfterTheTrainableParametersAndAreNotCounted() {
    Model m = new Model(NET, dev);
    ParameterSet ps = m.parameters();
    assertEquals(List.of("0.conv2d.weight", "0.conv2d.bias", "1.batchnorm2d.weight", "1.batchnorm2d.bias",
        "1.batchnorm2d.running_mean", "1.batchnorm2d.running_var", "4.linear.weight", "4.linear.bias",
        "5.batchnorm2d.weight", "5.batchnorm2d.bias", "5.batchnorm2d.running_mean", "5.batchnorm2d.running_var",
        "6.linear.weight", "6.linear.bias"), ps.entries().stream().map(ParameterSet.Entry::name).toList());
    long trainable = 3 * 2 * 9 + 3 + 3 + 3 + 48 * 5 + 5 + 5 + 5 + 5 * 2 + 2;
    assertEquals(trainable, ps.parameterCount(), "parameters, as torch's sum(p.numel() for p in parameters())");
    assertEquals(3 + 3 + 5 + 5, ps.bufferCount());
    for (ParameterSet.Entry e : ps.entries()) {
      if (e.trainable()) {
        assertTrue(e.offset() + e.numel() <= ps.trainableElements(), e.name() + " in the trainable prefix");
      } else {
        assertTrue(e.offset() >= ps.trainableElements(), e.name() + " after it");
      }
    }
    assertEquals(ps.trainableElements(), ps.trainableParams().numel());
    assertTrue(ps.trainableElements() < ps.totalElements());
    // Without buffers nothing changes: the prefix is the whole buffer.
    ParameterSet plain = new Model(ModelSpec.mlp(4, new int[] {3}, 2, "relu", 0f), dev).parameters();
    assertEquals(plain.totalElements(), plain.trainableElements());
    assertTrue(plain.trainableParams() == plain.params());
  }

  @ParameterizedTest(name = "{0}")
  @ValueSource(strings = {"sgd", "adamw"})
  void optimizerNeverTouchesBuffers(String type) {
    Model m = new Model(NET, dev);
    m.initialize(3);
    OptimizerConfig cfg = type.equals("sgd") ? OptimizerConfig.sgd(0.1).withMomentum(0.9).withWeightDecay(0.5)
        : OptimizerConfig.adamw(0.1).withWeightDecay(0.5);
    Optimizer opt = cfg.create(dev, m.parameters());
    ParameterSet ps = m.parameters();
    float[] ones = new float[(int) ps.totalElements()];
    Arrays.fill(ones, 1f);
    float[] before = m.parametersToHost();
    for (int step = 0; step < 3; step++) {
      dev.upload(ones, 0, ps.grads()); // even a (bogus) non-zero gradient on the buffers is ignored
      opt.step(0.1);
    }
    float[] after = m.parametersToHost();
    for (ParameterSet.Entry e : ps.entries()) {
      float[] b = Arrays.copyOfRange(before, (int) e.offset(), (int) (e.offset() + e.numel()));
      float[] a = Arrays.copyOfRange(after, (int) e.offset(), (int) (e.offset() + e.numel()));
      if (e.trainable()) {
        assertFalse(Arrays.equals(a, b), e.name() + " is trained");
      } else {
        assertArrayEquals(b, a, e.name() + " is a buffer: unchanged");
      }
    }
  }

  @Test
  void checkpointsCarryTheRunningStatistics() throws Exception {
    Model a = new Model(NET, dev);
    a.initialize(5);
    Optimizer optA = OptimizerConfig.adamw(1e-3).create(dev, a.parameters());
    // one training forward moves the running statistics away from (0, 1)
    Tensor x = h.tensor(h.rand(4 * 32, -1, 1), 4, 32);
    a.forward(x, TRAIN);
    float[] trained = a.parametersToHost();
    CheckpointData data = Checkpoints.capture(a, optA, 1, 0, null);
    assertTrue(data.tensors().containsKey("param/1.batchnorm2d.running_mean"));
    assertTrue(data.tensors().containsKey("param/5.batchnorm2d.running_var"));

    Model b = new Model(NET, dev);
    b.initialize(6);
    Optimizer optB = OptimizerConfig.adamw(1e-3).create(dev, b.parameters());
    Checkpoints.restore(data, b, optB);
    assertArrayEquals(trained, b.parametersToHost());
    // and the restored model evaluates like the original
    assertArrayEquals(h.host(a.forward(x, EVAL)), h.host(b.forward(x, EVAL)));
  }
}
