package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Synchronised batch norm (Note [synchronised batch norm] in BatchNorm2d) on the CPU:
 * <ul>
 *   <li>the five Device ops against their definition in double (fp32), and bf16 storage = the fp32 result on
 *       the bf16 values rounded once (bitwise);
 *   <li>the sync path with one rank (no communicator, or W = 1): gradients against finite differences, and
 *       the same y, dx, dgamma, dbeta and running statistics as the per-rank layer (<= 1e-5);
 *   <li>the DDP invariant on the TCP ring (W = 2, {@link LocalLauncher}): two ranks with batch B each give
 *       the same y, dx, all-reduced dgamma/dbeta and running statistics as one rank with the concatenated 2B
 *       batch (<= 1e-5), for one layer over two steps and for a small CNN (residual block, loss, backward
 *       through every layer); the ranks' running statistics are bitwise identical (per-rank BN's differ);
 *   <li>the trainer on the ring with {@link ModelSpec#withSyncBatchNorm()}: every parameter and buffer
 *       bitwise identical on both ranks after training;
 *   <li>the spec: "sync" in JSON, withSyncBatchNorm inside residual blocks, the zoo's "syncBatchNorm".
 * </ul>
 */
@Timeout(120)
class SyncBatchNormTest {
  private static final Layer.Context TRAIN = new Layer.Context(true, 1L, 1L);
  private static final float MOMENTUM = 0.25f;
  private static final float EPS = 1e-3f;
  private final CpuDevice dev = new CpuDevice();
  private final CnnGradientHarness h = new CnnGradientHarness(dev, 17L);

  @AfterEach
  void close() {
    dev.close();
  }

  private Tensor t(DType dt, float[] v, int... shape) {
    Tensor x = dev.allocate(dt, shape);
    dev.upload(v, 0, x);
    return x;
  }

  private Tensor t(float[] v, int... shape) {
    return t(DType.FLOAT32, v, shape);
  }

  /** max |a - b| <= tol * max(1, max |want|), element by element. */
  private static void close(float[] want, float[] got, double tol, String what) {
    CnnGradientHarness.assertClose(CnnGradientHarness.toDouble(want), got, tol, what);
  }

  // ---------------------------------------------------------------- the ops

  @Test
  void opsMatchTheirDefinition() {
    int n = 3;
    int c = 4;
    int s = 5 * 2;
    int[] shape = {n, c, 5, 2};
    float[] x = h.rand(n * c * s, -1, 3);
    float[] dy = h.rand(x.length, -1, 1);
    float[] gamma = h.rand(c, 0.5, 1.5);
    float[] beta = h.rand(c, -1, 1);
    float[] rm0 = h.rand(c, -1, 1);
    float[] rv0 = h.rand(c, 0.5, 2);
    double m = n * s;
    double[] sum = new double[c];
    double[] sq = new double[c];
    for (int i = 0; i < x.length; i++) {
      int ch = (i / s) % c;
      sum[ch] += x[i];
      sq[ch] += (double) x[i] * x[i];
    }
    Tensor xt = t(x, shape);
    Tensor stats = dev.allocate(DType.FLOAT32, 2 * c);
    dev.batchNormStats(xt, stats);
    float[] st = h.host(stats);
    double[] wantStats = new double[2 * c];
    double[] mean = new double[c];
    double[] inv = new double[c];
    double[] wantRm = new double[c];
    double[] wantRv = new double[c];
    for (int ch = 0; ch < c; ch++) {
      wantStats[ch] = sum[ch];
      wantStats[c + ch] = sq[ch];
      mean[ch] = sum[ch] / m;
      double var = sq[ch] / m - mean[ch] * mean[ch];
      inv[ch] = 1 / Math.sqrt(var + EPS);
      wantRm[ch] = (1 - MOMENTUM) * rm0[ch] + MOMENTUM * mean[ch];
      wantRv[ch] = (1 - MOMENTUM) * rv0[ch] + MOMENTUM * var * m / (m - 1);
    }
    CnnGradientHarness.assertClose(wantStats, st, 1e-7, "stats");
    Tensor mt = dev.allocate(DType.FLOAT32, c);
    Tensor it = dev.allocate(DType.FLOAT32, c);
    Tensor rm = t(rm0, c);
    Tensor rv = t(rv0, c);
    dev.batchNormFinalizeStats(stats, n * s, MOMENTUM, EPS, mt, it, rm, rv);
    CnnGradientHarness.assertClose(mean, h.host(mt), 1e-6, "mean");
    CnnGradientHarness.assertClose(inv, h.host(it), 1e-6, "invStd");
    CnnGradientHarness.assertClose(wantRm, h.host(rm), 1e-6, "running mean");
    CnnGradientHarness.assertClose(wantRv, h.host(rv), 1e-6, "running var");
    Tensor mt2 = dev.allocate(DType.FLOAT32, c);
    dev.batchNormFinalizeStats(stats, n * s, MOMENTUM, EPS, mt2, dev.allocate(DType.FLOAT32, c), null, null);
    assertArrayEquals(h.host(mt), h.host(mt2), "running statistics are optional");

    Tensor y = dev.allocate(DType.FLOAT32, shape);
    dev.batchNormApply(xt, t(gamma, c), t(beta, c), mt, it, y);
    double[] wantY = new double[x.length];
    double[] sdy = new double[c];
    double[] sdyx = new double[c];
    for (int i = 0; i < x.length; i++) {
      int ch = (i / s) % c;
      double xh = (x[i] - mean[ch]) * inv[ch];
      wantY[i] = gamma[ch] * xh + beta[ch];
      sdy[ch] += dy[i];
      sdyx[ch] += dy[i] * xh;
    }
    CnnGradientHarness.assertClose(wantY, h.host(y), 1e-6, "y");
    Tensor sums = dev.allocate(DType.FLOAT32, 2 * c);
    Tensor dyt = t(dy, shape);
    dev.batchNormBackwardReduce(xt, dyt, mt, it, sums);
    double[] wantSums = new double[2 * c];
    for (int ch = 0; ch < c; ch++) {
      wantSums[ch] = sdy[ch];
      wantSums[c + ch] = sdyx[ch];
    }
    CnnGradientHarness.assertClose(wantSums, h.host(sums), 1e-6, "sums");
    Tensor dx = dev.allocate(DType.FLOAT32, shape);
    dev.fill(dx, 7f); // overwritten, not accumulated
    dev.batchNormBackwardApply(xt, dyt, t(gamma, c), mt, it, sums, n * s, dx);
    double[] wantDx = new double[x.length];
    for (int i = 0; i < x.length; i++) {
      int ch = (i / s) % c;
      double xh = (x[i] - mean[ch]) * inv[ch];
      wantDx[i] = gamma[ch] * inv[ch] / m * (m * dy[i] - sdy[ch] - xh * sdyx[ch]);
    }
    CnnGradientHarness.assertClose(wantDx, h.host(dx), 1e-5, "dx");
  }

  @Test
  void bf16StorageRoundsTheFp32ResultOnce() {
    int[] shape = {2, 3, 4, 3};
    int c = 3;
    float[] x = round(h.rand(72, -2, 2));
    float[] dy = round(h.rand(72, -1, 1));
    Tensor g = t(h.rand(c, 0.5, 1.5), c);
    Tensor b = t(h.rand(c, -1, 1), c);
    float[][] f32 = allOps(DType.FLOAT32, x, dy, shape, g, b);
    float[][] bf16 = allOps(DType.BFLOAT16, x, dy, shape, g, b);
    assertArrayEquals(f32[0], bf16[0], "stats of bf16 values are those of the same values in fp32");
    assertArrayEquals(f32[2], bf16[2], "sums likewise");
    assertArrayEquals(round(f32[1]), bf16[1], "y = fp32 y rounded to bf16 once");
    assertArrayEquals(round(f32[3]), bf16[3], "dx = fp32 dx rounded to bf16 once");
  }

  private static float[] round(float[] a) {
    float[] r = new float[a.length];
    for (int i = 0; i < a.length; i++) {
      r[i] = CpuDevice.roundBf16(a[i]);
    }
    return r;
  }

  /** [stats, y, sums, dx] of the four ops with activations of dtype dt. */
  private float[][] allOps(DType dt, float[] x, float[] dy, int[] shape, Tensor g, Tensor b) {
    int c = shape[1];
    long m = Shape.numel(shape) / c;
    Tensor xt = t(dt, x, shape);
    Tensor dyt = t(dt, dy, shape);
    Tensor stats = dev.allocate(DType.FLOAT32, 2 * c);
    Tensor mean = dev.allocate(DType.FLOAT32, c);
    Tensor inv = dev.allocate(DType.FLOAT32, c);
    Tensor y = dev.allocate(dt, shape);
    Tensor sums = dev.allocate(DType.FLOAT32, 2 * c);
    Tensor dx = dev.allocate(dt, shape);
    dev.batchNormStats(xt, stats);
    dev.batchNormFinalizeStats(stats, m, 0.1f, 1e-5f, mean, inv, null, null);
    dev.batchNormApply(xt, g, b, mean, inv, y);
    dev.batchNormBackwardReduce(xt, dyt, mean, inv, sums);
    dev.batchNormBackwardApply(xt, dyt, g, mean, inv, sums, m, dx);
    return new float[][] {h.host(stats), h.host(y), h.host(sums), h.host(dx)};
  }

  @Test
  void opsCheckTheirArguments() {
    Tensor x = dev.allocate(DType.FLOAT32, 2, 3, 2, 2);
    Tensor c3 = dev.allocate(DType.FLOAT32, 3);
    Tensor c6 = dev.allocate(DType.FLOAT32, 6);
    assertThrows(IllegalArgumentException.class, () -> dev.batchNormStats(x, c3), "stats must be 2C");
    assertThrows(IllegalArgumentException.class, () -> dev.batchNormFinalizeStats(c6, 1, 0.1f, 1e-5f, c3, c3, c3,
        c3), "count 1");
    assertThrows(IllegalArgumentException.class, () -> dev.batchNormFinalizeStats(c6, 8, 0.1f, 1e-5f, c3, c3, c3,
        null), "one running statistic only");
    assertThrows(IllegalArgumentException.class, () -> dev.batchNormApply(x, c3, c3, c3, c3,
        dev.allocate(DType.BFLOAT16, 2, 3, 2, 2)), "y of another dtype");
    assertThrows(IllegalArgumentException.class, () -> dev.batchNormBackwardReduce(x,
        dev.allocate(DType.FLOAT32, 2, 3, 4), c3, c3, c6), "dy of another shape");
    assertThrows(IllegalArgumentException.class, () -> dev.batchNormBackwardApply(x, x, c3, c3, c3, c3, 8, x),
        "sums must be 2C");
  }

  // ---------------------------------------------------------------- one rank

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3})
  void gradientsOfTheSyncPath(int batch) {
    h.layerCase(new BatchNorm2d(0.1f, 1e-5f, true), batch, new int[] {3, 3, 2}, TRAIN).check("sync bn, no comm");
    Layer.Context one = new Layer.Context(true, 1L, 1L, new LocalCommunicator());
    h.layerCase(new BatchNorm2d(0.1f, 1e-5f, true), batch, new int[] {2, 2, 2}, one).check("sync bn, W = 1");
    h.layerCase(new BatchNorm2d(0.1f, 1e-5f, true), 5, new int[] {4}, TRAIN).check("sync bn over (N, C)");
  }

  /** y, dx, the gradient buffer and the parameter buffer (with the running statistics) after each step. */
  record Steps(List<float[]> y, List<float[]> dx, List<float[]> grads, List<float[]> params) {
    Steps() {
      this(new ArrayList<>(), new ArrayList<>(), new ArrayList<>(), new ArrayList<>());
    }
  }

  /**
   * {@code steps} training steps of one batchnorm2d layer on its own device: x[k] and dy[k] are the rows of
   * step k, params the initial flat buffer; the gradients are zeroed per step and, with a communicator of W
   * > 1, all-reduced (as the trainer does).
   */
  static Steps runLayer(boolean sync, int[] sample, float[] params, float[][] x, float[][] dy, int batch,
      Communicator comm) {
    try (CpuDevice d = new CpuDevice()) {
      BatchNorm2d bn = new BatchNorm2d(MOMENTUM, EPS, sync);
      ParameterSet.Builder b = ParameterSet.builder();
      bn.declare("bn", sample, b);
      ParameterSet ps = b.build(d);
      bn.bind(d, ps);
      d.upload(params, 0, ps.params());
      int[] shape = Shape.withBatch(batch, sample);
      Tensor xt = d.allocate(DType.FLOAT32, shape);
      Tensor dyt = d.allocate(DType.FLOAT32, shape);
      Layer.Context ctx = new Layer.Context(true, 1L, 1L, comm);
      Steps out = new Steps();
      for (int k = 0; k < x.length; k++) {
        d.fill(ps.grads(), 0f);
        d.upload(x[k], 0, xt);
        d.upload(dy[k], 0, dyt);
        out.y().add(host(d, bn.forward(xt, ctx)));
        out.dx().add(host(d, bn.backward(dyt, ctx, true)));
        if (comm != null && comm.worldSize() > 1) {
          comm.allReduceSum(ps.grads());
        }
        out.grads().add(host(d, ps.grads()));
        out.params().add(host(d, ps.params()));
      }
      return out;
    }
  }

  static float[] host(CpuDevice d, Tensor t) {
    float[] a = new float[t.size()];
    d.download(t, a, 0);
    return a;
  }

  /** The layer's initial flat buffer: random weight and bias, running statistics away from (0, 1). */
  private float[] initialParams(int[] sample) {
    BatchNorm2d bn = new BatchNorm2d(MOMENTUM, EPS);
    ParameterSet.Builder b = ParameterSet.builder();
    bn.declare("bn", sample, b);
    ParameterSet ps = b.build(dev);
    float[] p = new float[ps.params().size()];
    int c = sample[0];
    String[] names = {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"};
    float[][] values = {h.rand(c, 0.5, 1.5), h.rand(c, -1, 1), h.rand(c, -0.5, 0.5), h.rand(c, 0.5, 2)};
    for (int k = 0; k < names.length; k++) {
      System.arraycopy(values[k], 0, p, (int) ps.entries().get(ps.indexOf(names[k])).offset(), c);
    }
    return p;
  }

  @Test
  void oneRankEqualsThePerRankLayer() {
    int[] sample = {3, 4, 5};
    int batch = 4;
    float[] params = initialParams(sample);
    float[][] x = {h.rand(batch * 60, -1, 2), h.rand(batch * 60, -2, 1)};
    float[][] dy = {h.rand(batch * 60, -1, 1), h.rand(batch * 60, -1, 1)};
    Steps plain = runLayer(false, sample, params, x, dy, batch, null);
    for (Communicator comm : new Communicator[] {null, new LocalCommunicator()}) {
      Steps sync = runLayer(true, sample, params, x, dy, batch, comm);
      for (int k = 0; k < x.length; k++) {
        String tag = (comm == null ? "no communicator" : "W = 1") + ", step " + (k + 1);
        close(plain.y().get(k), sync.y().get(k), 1e-5, tag + ": y");
        close(plain.dx().get(k), sync.dx().get(k), 1e-5, tag + ": dx");
        close(plain.grads().get(k), sync.grads().get(k), 1e-5, tag + ": dgamma, dbeta");
        close(plain.params().get(k), sync.params().get(k), 1e-6, tag + ": running statistics");
      }
    }
  }

  @Test
  void oneValuePerChannelOverAllRanksCannotTrain() {
    CnnGradientHarness.Case c = h.layerCase(new BatchNorm2d(0.1f, 1e-5f, true), 2, new int[] {3, 1, 1},
        new Layer.Context(false, 1L, 1L));
    Tensor one = dev.allocate(DType.FLOAT32, 1, 3, 1, 1);
    String m = assertThrows(IllegalArgumentException.class, () -> c.layer.forward(one, TRAIN)).getMessage();
    assertEquals("batchnorm2d layer: training needs more than one value per channel over all ranks, got "
        + "float32(1, 3, 1, 1)@cpu; use a larger batch, or evaluation mode", m);
  }

  @Test
  void backwardWithoutInputGradientStillAccumulatesParameterGradients() {
    CnnGradientHarness.Case c = h.layerCase(new BatchNorm2d(0.1f, 1e-5f, true), 3, new int[] {2, 2, 2}, TRAIN);
    double[][] once = c.analytic();
    c.forward();
    assertNull(c.layer.backward(c.dy, TRAIN, false));
    double[] twice = c.trainable(h.host(c.ps.grads()));
    for (int k = 0; k < twice.length; k++) {
      assertEquals(2 * once[1][k], twice[k], 1e-5);
    }
  }

  // ---------------------------------------------------------------- two ranks (TCP ring)

  @ParameterizedTest(name = "sample {0}")
  @ValueSource(strings = {"3x4x5", "6"})
  void twoRanksEqualOneRankWithTheConcatenatedBatch(String sampleText) {
    int[] sample = Arrays.stream(sampleText.split("x")).mapToInt(Integer::parseInt).toArray();
    int per = Math.toIntExact(Shape.numel(sample));
    int batch = 3;
    int world = 2;
    float[] params = initialParams(sample);
    float[][] x = {h.rand(world * batch * per, -1, 2), h.rand(world * batch * per, -2, 1)};
    float[][] dy = {h.rand(world * batch * per, -1, 1), h.rand(world * batch * per, -1, 1)};
    Steps whole = runLayer(false, sample, params, x, dy, world * batch, null);
    for (boolean sync : new boolean[] {true, false}) {
      List<Steps> ranks = LocalLauncher.run(world, 0, 60, ctx -> {
        float[][] xs = new float[x.length][];
        float[][] dys = new float[x.length][];
        for (int k = 0; k < x.length; k++) {
          int from = ctx.rank() * batch * per;
          xs[k] = Arrays.copyOfRange(x[k], from, from + batch * per);
          dys[k] = Arrays.copyOfRange(dy[k], from, from + batch * per);
        }
        try (Communicator comm = RingCommunicator.create(ctx, Duration.ofSeconds(30))) {
          return runLayer(sync, sample, params, xs, dys, batch, comm);
        }
      });
      for (int k = 0; k < x.length; k++) {
        String tag = "step " + (k + 1);
        if (!sync) {
          assertFalse(Arrays.equals(ranks.get(0).params().get(k), ranks.get(1).params().get(k)),
              tag + ": per-rank batch norm keeps per-rank running statistics");
          continue;
        }
        float[] y = concat(ranks.get(0).y().get(k), ranks.get(1).y().get(k));
        float[] dx = concat(ranks.get(0).dx().get(k), ranks.get(1).dx().get(k));
        close(whole.y().get(k), y, 1e-5, tag + ": y of W = 2 vs W = 1 with 2B");
        close(whole.dx().get(k), dx, 1e-5, tag + ": dx");
        for (int r = 0; r < world; r++) {
          close(whole.grads().get(k), ranks.get(r).grads().get(k), 1e-5, tag + ": all-reduced grads, rank " + r);
          close(whole.params().get(k), ranks.get(r).params().get(k), 1e-5, tag + ": running statistics, rank " + r);
        }
        assertArrayEquals(ranks.get(0).params().get(k), ranks.get(1).params().get(k),
            tag + ": the running statistics are bitwise identical on both ranks");
      }
    }
  }

  static float[] concat(float[] a, float[] b) {
    float[] r = Arrays.copyOf(a, a.length + b.length);
    System.arraycopy(b, 0, r, a.length, b.length);
    return r;
  }

  static final ModelSpec SYNC_CNN = CnnDataParallelTest.SPEC.withSyncBatchNorm();

  /** out (N, 3), then the gradient buffer, then the parameter buffer after one forward/backward. */
  static float[][] modelStep(Communicator comm, float[] x, int[] labels, int batch, int world) {
    try (CpuDevice d = new CpuDevice()) {
      Model m = new Model(SYNC_CNN, d);
      m.initialize(7);
      Tensor xt = d.allocate(DType.FLOAT32, batch, 36);
      d.upload(x, 0, xt);
      Tensor yt = d.allocate(DType.INT32, batch);
      d.upload(labels, 0, yt);
      Layer.Context ctx = new Layer.Context(true, 1L, 1L, comm);
      m.zeroGrad();
      Tensor out = m.forward(xt, ctx);
      Tensor losses = d.allocate(DType.FLOAT32, batch);
      Tensor dOut = d.allocate(DType.FLOAT32, batch, 3);
      Loss.CROSS_ENTROPY.compute(d, out, yt, losses, dOut, 1f / (batch * world));
      m.backward(dOut, ctx);
      comm.allReduceSum(m.parameters().grads());
      return new float[][] {host(d, out), host(d, m.parameters().grads()), m.parametersToHost()};
    }
  }

  @Test
  void aCnnOnTwoRanksEqualsOneRankWithTheConcatenatedBatch() {
    int batch = 4;
    float[] x = h.rand(2 * batch * 36, -1, 2);
    int[] labels = new int[2 * batch];
    SplittableRandom r = new SplittableRandom(3);
    for (int i = 0; i < labels.length; i++) {
      labels[i] = r.nextInt(3);
    }
    float[][] whole = modelStep(new LocalCommunicator(), x, labels, 2 * batch, 1);
    List<float[][]> ranks = LocalLauncher.run(2, 0, 60, ctx -> {
      int from = ctx.rank() * batch;
      try (Communicator comm = RingCommunicator.create(ctx, Duration.ofSeconds(30))) {
        return modelStep(comm, Arrays.copyOfRange(x, from * 36, (from + batch) * 36),
            Arrays.copyOfRange(labels, from, from + batch), batch, 2);
      }
    });
    close(whole[0], concat(ranks.get(0)[0], ranks.get(1)[0]), 1e-5, "logits");
    for (int k = 0; k < 2; k++) {
      close(whole[1], ranks.get(k)[1], 1e-5, "all-reduced gradients of every layer, rank " + k);
      close(whole[2], ranks.get(k)[2], 1e-5, "parameters and running statistics, rank " + k);
    }
    assertArrayEquals(ranks.get(0)[2], ranks.get(1)[2], "running statistics bitwise identical on both ranks");
  }

  @Test
  void trainerKeepsEveryBufferIdenticalAcrossRanks() {
    HeapRowStore store = CnnDataParallelTest.images(96);
    int world = 2;
    int batch = 8;
    SamplerPlan plan = new SamplerPlan(store.rows(), world, batch, 5, false);
    List<float[]> params = LocalLauncher.run(world, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(batch).seed(5)
          .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
      try (CpuDevice d = new CpuDevice();
          Communicator comm = RingCommunicator.create(ctx, Duration.ofSeconds(30))) {
        Model m = new Model(SYNC_CNN, d);
        Trainer t = new Trainer(m, cfg, comm);
        t.initializeWeights();
        t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
        return m.parametersToHost();
      }
    });
    assertArrayEquals(params.get(0), params.get(1), "weights and running statistics identical on both ranks");
    ParameterSet layout = new Model(SYNC_CNN, dev).parameters();
    int buffers = 0;
    for (ParameterSet.Entry e : layout.entries()) {
      if (!e.trainable()) {
        buffers++;
        float[] v = Arrays.copyOfRange(params.get(0), (int) e.offset(), (int) (e.offset() + e.numel()));
        float init = e.name().endsWith("running_var") ? 1f : 0f;
        for (float f : v) {
          assertTrue(Float.isFinite(f) && f != init, e.name() + " was updated: " + Arrays.toString(v));
        }
      }
    }
    assertEquals(4, buffers);
  }

  // ---------------------------------------------------------------- the spec

  @Test
  void specOption() {
    ModelSpec plain = CnnDataParallelTest.SPEC;
    assertFalse(plain.toJson().contains("sync"), "per-rank specs keep their JSON");
    ModelSpec sync = plain.withSyncBatchNorm();
    assertTrue(sync.toJson().contains("\"sync\":true"));
    assertEquals(sync, ModelSpec.fromJson(sync.toJson()));
    assertFalse(plain.equals(sync));
    List<Layer> layers = sync.newLayers();
    assertTrue(((BatchNorm2d) layers.get(1)).sync(), "top-level batch norm");
    Residual res = (Residual) layers.get(4);
    assertTrue(((BatchNorm2d) res.main().layers().get(1)).sync(), "inside the residual block");
    assertFalse(((BatchNorm2d) plain.newLayers().get(1)).sync());
    try (CpuDevice d = new CpuDevice()) {
      assertEquals(new Model(plain, d).parameters().entries().stream().map(ParameterSet.Entry::name).toList(),
          new Model(sync, d).parameters().entries().stream().map(ParameterSet.Entry::name).toList(),
          "same parameters and names");
    }
    ModelSpec one = ModelSpec.fromJson("{\"input\": [2, 4, 4], \"layers\": [{\"type\": \"batchnorm2d\","
        + " \"sync\": true}, {\"type\": \"batchnorm2d\"}]}");
    assertEquals(new ModelSpec.Norm(0.1f, 1e-5f, true), one.layers().get(0).norm());
    assertEquals(ModelSpec.Norm.DEFAULT, one.layers().get(1).norm());
    assertEquals(ModelSpec.builder().input(2, 4, 4).batchNorm2d(ModelSpec.Norm.DEFAULT.withSync(true)).batchNorm2d()
        .build(), one);
    assertEquals("model spec: layers[0].sync must be true or false", assertThrows(IllegalArgumentException.class,
        () -> ModelSpec.fromJson("{\"input\": [2], \"layers\": [{\"type\": \"batchnorm2d\", \"sync\": 1}]}"))
        .getMessage());
    assertEquals(ModelZoo.resnet18(10, 3, 32, 32).withSyncBatchNorm(), ModelSpec.fromJson(
        "{\"zoo\": \"resnet18\", \"classes\": 10, \"input\": [3, 32, 32], \"syncBatchNorm\": true}"));
    assertEquals(ModelZoo.resnet18(10, 3, 32, 32), ModelSpec.fromJson(
        "{\"zoo\": \"resnet18\", \"classes\": 10, \"input\": [3, 32, 32], \"syncBatchNorm\": false}"));
    long syncNorms = ModelZoo.resnet50(10).withSyncBatchNorm().toJson().split("\"sync\":true", -1).length - 1;
    assertEquals(53, syncNorms, "every batch norm of ResNet-50 (stem 1, 16 blocks x 3, 4 shortcuts)");
  }
}
