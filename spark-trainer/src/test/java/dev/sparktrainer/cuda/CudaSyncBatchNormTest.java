package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static dev.sparktrainer.cuda.CudaTestSupport.maxAbs;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.cuda.CudaConvOpsTest.BnCase;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.BatchNorm2d;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Synchronised batch norm on the GPU (bn_sync.cuh; Note [synchronised batch norm] in BatchNorm2d):
 * <ul>
 *   <li>the five Device ops against the CPU engine, fp32 and bf16 activations, channels-first and (4-D inputs)
 *       channels-last (Note [channels-last tensors] in CudaDevice: y and dx take x's layout; the NHWC reductions
 *       are tiled differently, see bn_sync.cuh), over CudaConvOpsTest's batch-norm shapes plus more channels
 *       than reduction blocks and a 3-D input. The reductions (stats, backward sums) sum the same values in
 *       another order, in double, except that the NHWC kernels first add each thread's 2-4 terms per channel of
 *       one iteration in float (bn_sync.cuh): error {@value #SUM_TOL} relative to each sum, with a floor of 1e-3
 *       of the largest (measured: up to 1e-5 where a channel's sum nearly cancels). The per-channel and elementwise passes mirror the CPU's arithmetic (fmad
 *       off), so from the same inputs (the CPU's stats, mean, invStd and sums uploaded) they must give the
 *       same bits: finalize (mean, invStd, running statistics), apply (y), backward apply (dx), in fp32 and bf16.
 *       End to end (each device on its own sums): y and dx within {@value #FP32_TOL} (fp32) / {@value
 *       #BF16_TOL} (bf16, one rounding of the output), normwise. Outputs start dirty (overwritten, not added).
 *       The reductions give the same bits on a second run (no atomics);
 *   <li>the sync ops at W = 1 against cuDNN's batch norm (the per-rank path) on one GPU, fp32, within
 *       {@value #FP32_TOL};
 *   <li>on 2 GPUs (NCCL, rank threads via {@link LocalLauncher}): one sync layer on two ranks with batch B
 *       each equals the cuDNN layer on one GPU with the 2B batch (y, dx, all-reduced dgamma/dbeta, running
 *       statistics within {@value #FP32_TOL}), and a small CNN with sync batch norm trained by the {@link Trainer}
 *       (gradient buckets on) keeps every parameter and every running statistic bitwise identical on both
 *       ranks after each step, in fp32 and in bf16 mixed precision.
 * </ul>
 * Every measured error goes to the GPU report (-Dsparktrainer.gpu.report).
 */
class CudaSyncBatchNormTest {
  static final double SUM_TOL = 5e-5;
  static final double FP32_TOL = 1e-5;
  static final double BF16_TOL = 1e-2;
  static final float MOMENTUM = 0.1f;
  static final float EPS = 1e-5f;
  static final DType F32 = DType.FLOAT32;
  static final DType BF16 = DType.BFLOAT16;
  static CudaDevice gpu;
  static CpuDevice cpu;

  @BeforeEach
  void open() {
    CudaTestSupport.assumeGpu();
    if (gpu == null) {
      gpu = new CudaDevice(0);
      cpu = new CpuDevice();
      CudaTestLog.note("# CudaSyncBatchNormTest on " + Cuda.deviceName(0));
    }
  }

  @AfterAll
  static void close() {
    if (gpu != null) {
      gpu.close();
      cpu.close();
      gpu = null;
    }
  }

  // ---------------------------------------------------------------- helpers

  static Tensor tensor(Device d, DType dt, float[] data, int... shape) {
    Tensor t = d.allocate(dt, shape);
    d.upload(data, 0, t);
    return t;
  }

  static Tensor dirty(DType dt, int... shape) {
    Tensor t = gpu.allocate(dt, shape);
    gpu.fill(t, 3.25f);
    return t;
  }

  /** max_i |act_i - ref_i| / max(|ref_i|, 1e-3 max |ref|): for sums, each of which is rounded once. */
  static void checkSums(String what, float[] ref, float[] act, double tol) {
    assertEquals(ref.length, act.length, what + ": lengths differ");
    double floor = Math.max(1e-3 * maxAbs(ref), 1e-30);
    double worst = 0;
    for (int i = 0; i < ref.length; i++) {
      double d = Math.abs((double) act[i] - ref[i]);
      worst = Double.isFinite(d) ? Math.max(worst, d / Math.max(Math.abs(ref[i]), floor)) : Double.POSITIVE_INFINITY;
    }
    CudaTestLog.record(what, worst, tol);
    assertTrue(worst <= tol, what + ": error " + worst + " > " + tol);
  }

  /** Bitwise equality (the per-channel and elementwise passes mirror the CPU's arithmetic). */
  static void checkBits(String what, float[] ref, float[] act) {
    int diff = 0;
    for (int i = 0; i < ref.length; i++) {
      diff += Float.floatToIntBits(ref[i]) == Float.floatToIntBits(act[i]) ? 0 : 1;
    }
    CudaTestLog.note(String.format(Locale.ROOT, "%-70s %d of %d elements differ in any bit", what + " (bitwise)",
        diff, ref.length));
    assertArrayEquals(ref, act, what + ": must equal the CPU's bits");
  }

  static void checkNormwise(String what, float[] ref, float[] act, double tol) {
    CudaTestSupport.assertCloseNormwise(ref, act, tol, what);
  }

  static float[] half(float[] a, int which) {
    int c = a.length / 2;
    return Arrays.copyOfRange(a, which * c, (which + 1) * c);
  }

  static List<BnCase> cases() {
    List<BnCase> out = new ArrayList<>(CudaConvOpsTest.bnCases());
    out.add(new BnCase("(4, 2048, 2, 2): more channels than reduction blocks", new int[] {4, 2048, 2, 2}));
    out.add(new BnCase("3-D (4, 6, 10)", new int[] {4, 6, 10}));
    // ResNet-50 at batch 16 (CudaCnnTrainingTest's run): the stem, a stage-1 output and the last stage, whose
    // NHWC reductions run with 8, 32 and 256 channel groups per block and hundreds of row chunks.
    out.add(new BnCase("ResNet-50 batch 16 stem (16, 64, 112, 112)", new int[] {16, 64, 112, 112}));
    out.add(new BnCase("ResNet-50 batch 16 stage 1 (16, 256, 56, 56)", new int[] {16, 256, 56, 56}));
    out.add(new BnCase("ResNet-50 batch 16 stage 4 (16, 2048, 7, 7)", new int[] {16, 2048, 7, 7}));
    return out;
  }

  /** Every case in fp32 and bf16, channels-first; the 4-D ones also channels-last. */
  static Stream<Arguments> cases3() {
    List<Arguments> out = new ArrayList<>();
    for (BnCase bc : cases()) {
      for (DType dt : new DType[] {F32, BF16}) {
        out.add(Arguments.of(bc, dt, false));
        if (bc.shape().length == 4) {
          out.add(Arguments.of(bc, dt, true));
        }
      }
    }
    return out.stream();
  }

  /** A GPU activation holding data (logical NCHW order), stored channels-last when {@code cl}. */
  static Tensor activation(DType dt, float[] data, int[] shape, boolean cl) {
    Tensor t = tensor(gpu, dt, data, shape);
    if (!cl) {
      return t;
    }
    Tensor c = gpu.allocate(dt, shape);
    gpu.convertLayout(t, c, true, false);
    assertTrue(c.channelsLast());
    return c;
  }

  /** A host copy in logical (channels-first) order, converting a channels-last tensor first. */
  static float[] logical(Tensor t) {
    if (!t.channelsLast()) {
      return host(gpu, t);
    }
    Tensor c = gpu.allocate(t.dtype(), t.shape());
    gpu.convertLayout(t, c, false, false);
    return host(gpu, c);
  }

  // ---------------------------------------------------------------- the ops against the CPU

  @ParameterizedTest(name = "{0}, {1}, channels-last {2}")
  @MethodSource("cases3")
  void opsMatchTheCpu(BnCase bc, DType dt, boolean cl) {
    long seed = bc.name().hashCode();
    int c = bc.channels();
    int[] xs = bc.shape();
    long m = bc.m();
    float[] x = CudaConvOpsTest.as(dt, CudaConvOpsTest.bnInput(bc, seed));
    float[] dy = CudaConvOpsTest.as(dt, CudaConvOpsTest.uniform(x.length, seed + 1, -1, 1));
    float[] gamma = CudaConvOpsTest.uniform(c, seed + 2, 0.5, 1.5);
    float[] beta = CudaConvOpsTest.uniform(c, seed + 3, -0.5, 0.5);
    float[] rm0 = CudaConvOpsTest.uniform(c, seed + 4, -0.5, 0.5);
    float[] rv0 = CudaConvOpsTest.uniform(c, seed + 5, 0.5, 1.5);
    String tag = "sync bn " + bc + ", " + dt + (cl ? ", NHWC" : "") + ": ";

    // CPU reference, the whole chain
    Tensor cx = tensor(cpu, dt, x, xs);
    Tensor cdy = tensor(cpu, dt, dy, xs);
    Tensor cg = tensor(cpu, F32, gamma, c);
    Tensor cb = tensor(cpu, F32, beta, c);
    Tensor cstats = cpu.allocate(F32, 2 * c);
    Tensor cmean = cpu.allocate(F32, c);
    Tensor cinv = cpu.allocate(F32, c);
    Tensor crm = tensor(cpu, F32, rm0, c);
    Tensor crv = tensor(cpu, F32, rv0, c);
    Tensor cy = cpu.allocate(dt, xs);
    Tensor csums = cpu.allocate(F32, 2 * c);
    Tensor cdx = cpu.allocate(dt, xs);
    cpu.batchNormStats(cx, cstats);
    cpu.batchNormFinalizeStats(cstats, m, MOMENTUM, EPS, cmean, cinv, crm, crv);
    cpu.batchNormApply(cx, cg, cb, cmean, cinv, cy);
    cpu.batchNormBackwardReduce(cx, cdy, cmean, cinv, csums);
    cpu.batchNormBackwardApply(cx, cdy, cg, cmean, cinv, csums, m, cdx);
    float[] refStats = host(cpu, cstats);
    float[] refMean = host(cpu, cmean);
    float[] refInv = host(cpu, cinv);
    float[] refSums = host(cpu, csums);

    Tensor gx = activation(dt, x, xs, cl);
    Tensor gdy = activation(dt, dy, xs, cl);
    Tensor gg = tensor(gpu, F32, gamma, c);
    Tensor gb = tensor(gpu, F32, beta, c);

    // 1. stats: the reduction, then its determinism
    Tensor gstats = dirty(F32, 2 * c);
    gpu.batchNormStats(gx, gstats);
    float[] stats = host(gpu, gstats);
    checkSums(tag + "stats sum x", half(refStats, 0), half(stats, 0), SUM_TOL);
    checkSums(tag + "stats sum x^2", half(refStats, 1), half(stats, 1), SUM_TOL);
    gpu.batchNormStats(gx, gstats);
    assertArrayEquals(stats, host(gpu, gstats), tag + "stats: the same bits on a second run");

    // 2. finalize from the CPU's stats: the same bits
    Tensor gmean = dirty(F32, c);
    Tensor ginv = dirty(F32, c);
    Tensor grm = tensor(gpu, F32, rm0, c);
    Tensor grv = tensor(gpu, F32, rv0, c);
    gpu.batchNormFinalizeStats(tensor(gpu, F32, refStats, 2 * c), m, MOMENTUM, EPS, gmean, ginv, grm, grv);
    checkBits(tag + "finalize: mean", refMean, host(gpu, gmean));
    checkBits(tag + "finalize: invStd", refInv, host(gpu, ginv));
    checkBits(tag + "finalize: running mean", host(cpu, crm), host(gpu, grm));
    checkBits(tag + "finalize: running var (unbiased)", host(cpu, crv), host(gpu, grv));

    // 3. apply from the CPU's mean and invStd: the same bits
    Tensor gy = dirty(dt, xs);
    gpu.batchNormApply(gx, gg, gb, gmean, ginv, gy);
    assertEquals(cl, gy.channelsLast(), tag + "y takes x's layout");
    checkBits(tag + "apply: y", host(cpu, cy), logical(gy));

    // 4. backward sums: the reduction
    Tensor gsums = dirty(F32, 2 * c);
    gpu.batchNormBackwardReduce(gx, gdy, gmean, ginv, gsums);
    float[] sums = host(gpu, gsums);
    checkSums(tag + "backward sum dy", half(refSums, 0), half(sums, 0), SUM_TOL);
    checkSums(tag + "backward sum dy * xhat", half(refSums, 1), half(sums, 1), SUM_TOL);
    gpu.batchNormBackwardReduce(gx, gdy, gmean, ginv, gsums);
    assertArrayEquals(sums, host(gpu, gsums), tag + "backward sums: the same bits on a second run");

    // 5. backward apply from the CPU's sums: the same bits
    Tensor gdx = dirty(dt, xs);
    gpu.batchNormBackwardApply(gx, gdy, gg, gmean, ginv, tensor(gpu, F32, refSums, 2 * c), m, gdx);
    assertEquals(cl, gdx.channelsLast(), tag + "dx takes x's layout");
    checkBits(tag + "backward apply: dx", host(cpu, cdx), logical(gdx));

    // 6. end to end on the GPU's own sums
    Tensor gmean2 = dirty(F32, c);
    Tensor ginv2 = dirty(F32, c);
    gpu.batchNormFinalizeStats(gstats, m, MOMENTUM, EPS, gmean2, ginv2, null, null);
    gpu.batchNormApply(gx, gg, gb, gmean2, ginv2, gy);
    gpu.batchNormBackwardReduce(gx, gdy, gmean2, ginv2, gsums);
    gpu.batchNormBackwardApply(gx, gdy, gg, gmean2, ginv2, gsums, m, gdx);
    double tol = dt == F32 ? FP32_TOL : BF16_TOL;
    checkNormwise(tag + "end to end y", host(cpu, cy), logical(gy), tol);
    checkNormwise(tag + "end to end dx", host(cpu, cdx), logical(gdx), tol);
  }

  /** The sync ops at W = 1 compute what cuDNN's batch norm (the per-rank path) computes. */
  @Test
  void oneRankMatchesCudnnBatchNorm() {
    CudaTestSupport.assumeJni(); // cuDNN
    BnCase bc = new BnCase("(8, 64, 28, 28)", new int[] {8, 64, 28, 28});
    long seed = 11;
    int c = bc.channels();
    int[] xs = bc.shape();
    long m = bc.m();
    float[] x = CudaConvOpsTest.bnInput(bc, seed);
    Tensor gx = tensor(gpu, F32, x, xs);
    Tensor gdy = tensor(gpu, F32, CudaConvOpsTest.uniform(x.length, seed + 1, -1, 1), xs);
    Tensor gg = tensor(gpu, F32, CudaConvOpsTest.uniform(c, seed + 2, 0.5, 1.5), c);
    Tensor gb = tensor(gpu, F32, CudaConvOpsTest.uniform(c, seed + 3, -0.5, 0.5), c);
    float[] rm0 = CudaConvOpsTest.uniform(c, seed + 4, -0.5, 0.5);
    float[] rv0 = CudaConvOpsTest.uniform(c, seed + 5, 0.5, 1.5);
    // cuDNN
    Tensor y1 = gpu.allocate(F32, xs);
    Tensor rm1 = tensor(gpu, F32, rm0, c);
    Tensor rv1 = tensor(gpu, F32, rv0, c);
    Tensor sm1 = gpu.allocate(F32, c);
    Tensor si1 = gpu.allocate(F32, c);
    Tensor dx1 = gpu.allocate(F32, xs);
    Tensor dg1 = gpu.allocate(F32, c);
    Tensor db1 = gpu.allocate(F32, c);
    gpu.batchNormForwardTraining(gx, gg, gb, y1, rm1, rv1, MOMENTUM, EPS, sm1, si1);
    gpu.batchNormBackward(gx, gdy, gg, sm1, si1, dx1, dg1, db1);
    // the sync ops
    Tensor stats = gpu.allocate(F32, 2 * c);
    Tensor y2 = gpu.allocate(F32, xs);
    Tensor rm2 = tensor(gpu, F32, rm0, c);
    Tensor rv2 = tensor(gpu, F32, rv0, c);
    Tensor sm2 = gpu.allocate(F32, c);
    Tensor si2 = gpu.allocate(F32, c);
    Tensor sums = gpu.allocate(F32, 2 * c);
    Tensor dx2 = gpu.allocate(F32, xs);
    gpu.batchNormStats(gx, stats);
    gpu.batchNormFinalizeStats(stats, m, MOMENTUM, EPS, sm2, si2, rm2, rv2);
    gpu.batchNormApply(gx, gg, gb, sm2, si2, y2);
    gpu.batchNormBackwardReduce(gx, gdy, sm2, si2, sums);
    gpu.batchNormBackwardApply(gx, gdy, gg, sm2, si2, sums, m, dx2);
    float[] s = host(gpu, sums);
    String tag = "sync ops (W = 1) vs cuDNN batch norm " + bc + ", fp32: ";
    checkNormwise(tag + "y", host(gpu, y1), host(gpu, y2), FP32_TOL);
    checkNormwise(tag + "mean", host(gpu, sm1), host(gpu, sm2), FP32_TOL);
    checkNormwise(tag + "invStd", host(gpu, si1), host(gpu, si2), FP32_TOL);
    checkNormwise(tag + "running mean", host(gpu, rm1), host(gpu, rm2), FP32_TOL);
    checkNormwise(tag + "running var", host(gpu, rv1), host(gpu, rv2), FP32_TOL);
    checkNormwise(tag + "dx", host(gpu, dx1), host(gpu, dx2), FP32_TOL);
    checkNormwise(tag + "dbeta = sum dy", host(gpu, db1), half(s, 0), FP32_TOL);
    checkNormwise(tag + "dgamma = sum dy * xhat", host(gpu, dg1), half(s, 1), FP32_TOL);
  }

  // ---------------------------------------------------------------- two GPUs (NCCL)

  /** y, dx, the all-reduced gradient buffer and the parameter buffer (running statistics) after each step. */
  record LayerRun(List<float[]> y, List<float[]> dx, List<float[]> grads, List<float[]> params) {}

  static LayerRun runLayer(Device d, boolean sync, int[] sample, float[] params, float[][] x, float[][] dy,
      int batch, Communicator comm) {
    BatchNorm2d bn = new BatchNorm2d(MOMENTUM, EPS, sync);
    ParameterSet.Builder b = ParameterSet.builder();
    bn.declare("bn", sample, b);
    ParameterSet ps = b.build(d);
    bn.bind(d, ps);
    d.upload(params, 0, ps.params());
    int[] shape = Shape.withBatch(batch, sample);
    Tensor xt = d.allocate(F32, shape);
    Tensor dyt = d.allocate(F32, shape);
    Layer.Context ctx = new Layer.Context(true, 1L, 1L, comm);
    LayerRun out = new LayerRun(new ArrayList<>(), new ArrayList<>(), new ArrayList<>(), new ArrayList<>());
    for (int k = 0; k < x.length; k++) {
      d.fill(ps.grads(), 0f);
      d.upload(x[k], 0, xt);
      d.upload(dy[k], 0, dyt);
      out.y().add(host(d, bn.forward(xt, ctx)));
      out.dx().add(host(d, bn.backward(dyt, ctx, true)));
      comm.allReduceSum(ps.grads());
      out.grads().add(host(d, ps.grads()));
      out.params().add(host(d, ps.params()));
    }
    return out;
  }

  static float[] concat(float[] a, float[] b) {
    float[] r = Arrays.copyOf(a, a.length + b.length);
    System.arraycopy(b, 0, r, a.length, b.length);
    return r;
  }

  @Test
  void layerOnTwoGpusEqualsOneGpuWithTheConcatenatedBatch() {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni(); // NCCL and cuDNN
    int[] sample = {32, 14, 14};
    int per = Math.toIntExact(Shape.numel(sample));
    int batch = 4;
    BnCase bc = new BnCase("(8, 32, 14, 14)", Shape.withBatch(2 * batch, sample));
    float[][] x = {CudaConvOpsTest.bnInput(bc, 21), CudaConvOpsTest.bnInput(bc, 22)};
    float[][] dy = {CudaConvOpsTest.uniform(x[0].length, 23, -1, 1), CudaConvOpsTest.uniform(x[0].length, 24, -1, 1)};
    int c = sample[0];
    float[] params;
    LayerRun whole;
    try (CudaDevice d = new CudaDevice(0)) {
      ParameterSet.Builder b = ParameterSet.builder();
      new BatchNorm2d(MOMENTUM, EPS).declare("bn", sample, b);
      ParameterSet ps = b.build(d);
      params = new float[ps.params().size()];
      String[] names = {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"};
      float[][] v = {CudaConvOpsTest.uniform(c, 25, 0.5, 1.5), CudaConvOpsTest.uniform(c, 26, -0.5, 0.5),
          CudaConvOpsTest.uniform(c, 27, -0.5, 0.5), CudaConvOpsTest.uniform(c, 28, 0.5, 1.5)};
      for (int k = 0; k < names.length; k++) {
        System.arraycopy(v[k], 0, params, (int) ps.entries().get(ps.indexOf(names[k])).offset(), c);
      }
      whole = runLayer(d, false, sample, params, x, dy, 2 * batch, new LocalCommunicator()); // cuDNN, 2B
    }
    float[] p0 = params;
    List<LayerRun> ranks = LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
      float[][] xs = new float[x.length][];
      float[][] dys = new float[x.length][];
      int from = ctx.rank() * batch * per;
      for (int k = 0; k < x.length; k++) {
        xs[k] = Arrays.copyOfRange(x[k], from, from + batch * per);
        dys[k] = Arrays.copyOfRange(dy[k], from, from + batch * per);
      }
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator comm = NcclCommunicator.create(ctx, d, Duration.ofSeconds(120))) {
        return runLayer(d, true, sample, p0, xs, dys, batch, comm);
      }
    });
    for (int k = 0; k < x.length; k++) {
      String tag = "sync bn layer, 2 GPUs x batch " + batch + " vs cuDNN layer on 1 GPU x batch " + 2 * batch
          + ", step " + (k + 1) + ": ";
      checkNormwise(tag + "y", whole.y().get(k), concat(ranks.get(0).y().get(k), ranks.get(1).y().get(k)),
          FP32_TOL);
      checkNormwise(tag + "dx", whole.dx().get(k), concat(ranks.get(0).dx().get(k), ranks.get(1).dx().get(k)),
          FP32_TOL);
      for (int r = 0; r < 2; r++) {
        checkNormwise(tag + "all-reduced dgamma, dbeta (rank " + r + ")", whole.grads().get(k),
            ranks.get(r).grads().get(k), FP32_TOL);
        checkNormwise(tag + "weights and running statistics (rank " + r + ")", whole.params().get(k),
            ranks.get(r).params().get(k), FP32_TOL);
      }
      assertArrayEquals(ranks.get(0).params().get(k), ranks.get(1).params().get(k),
          tag + "running statistics must be bitwise identical on both ranks");
    }
  }

  /** A small CNN whose every batch norm is synchronised: stem, a residual block, a strided conv, the head. */
  static final ModelSpec CNN = ModelSpec.builder().input(3, 16, 16)
      .conv2d(ModelSpec.Conv.of(16, 3, 1, 1), false).batchNorm2d().relu()
      .residual(ModelSpec.builder().conv2d(ModelSpec.Conv.of(16, 3, 1, 1), false).batchNorm2d().relu()
          .conv2d(ModelSpec.Conv.of(16, 3, 1, 1), false).batchNorm2d().layerList(), List.of()).relu()
      .maxPool2d(2, 2, 0).conv2d(ModelSpec.Conv.of(32, 3, 2, 1), false).batchNorm2d().relu()
      .globalAvgPool().flatten().linear(10).build().withSyncBatchNorm();

  static HeapRowStore images(int n, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    int dim = 3 * 16 * 16;
    float[] f = new float[n * dim];
    int[] l = new int[n];
    for (int i = 0; i < n; i++) {
      l[i] = r.nextInt(10);
      for (int j = 0; j < dim; j++) {
        f[i * dim + j] = (float) (r.nextGaussian() + (j % 10 == l[i] ? 0.8 : 0.0));
      }
    }
    return new HeapRowStore(f, l, dim);
  }

  /** Per step: hashes of (trainable prefix, buffers); then the final flat buffer and the epoch losses. */
  record CnnRun(List<Integer> trainableHashes, List<Integer> bufferHashes, float[] params, long trainable,
      double[] losses) {}

  static int hash(float[] a, long from, long to) {
    int h = 1;
    for (long i = from; i < to; i++) {
      h = 31 * h + Float.floatToRawIntBits(a[(int) i]);
    }
    return h;
  }

  @Test
  void cnnOnTwoGpusKeepsRunningStatisticsBitwiseIdentical() {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni(); // NCCL, cuDNN, cuBLASLt
    int batch = 16;
    int steps = 3;
    HeapRowStore store = images(2 * batch * steps, 5);
    SamplerPlan plan = new SamplerPlan(store.rows(), 2, batch, 5, false);
    for (DType dt : new DType[] {F32, BF16}) {
      long t0 = System.nanoTime();
      List<CnnRun> runs = LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
        TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(batch).seed(5)
            .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
        try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
            NcclCommunicator comm = NcclCommunicator.create(ctx, d, Duration.ofSeconds(120))) {
          Model m = new Model(CNN, d, dt);
          Trainer t = new Trainer(m, cfg, comm);
          long trainable = m.parameters().trainableElements();
          long total = m.parameters().totalElements();
          List<Integer> th = new ArrayList<>();
          List<Integer> bh = new ArrayList<>();
          t.onStep(step -> {
            float[] p = m.parametersToHost();
            th.add(hash(p, 0, trainable));
            bh.add(hash(p, trainable, total));
          });
          t.initializeWeights();
          List<EpochStats> stats = t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
          return new CnnRun(th, bh, m.parametersToHost(), trainable,
              stats.stream().mapToDouble(EpochStats::loss).toArray());
        }
      });
      double seconds = (System.nanoTime() - t0) / 1e9;
      CnnRun a = runs.get(0);
      CnnRun b = runs.get(1);
      int moved = 0;
      int statistics = 0;
      try (CpuDevice d = new CpuDevice()) {
        Model m = new Model(CNN, d);
        m.initialize(5);
        float[] init = m.parametersToHost();
        for (ParameterSet.Entry e : m.parameters().entries()) {
          for (long i = e.offset(); !e.trainable() && i < e.offset() + e.numel(); i++) {
            statistics++;
            moved += a.params()[(int) i] != init[(int) i] ? 1 : 0;
          }
        }
      }
      CudaTestLog.note(String.format(Locale.ROOT, "sync-BN CNN, %s, 2 GPUs (NCCL, %s) x batch %d, %d steps: running"
          + " statistics bitwise identical after every step: %s; trainable parameters: %s; %d of %d running"
          + " statistics moved; epoch losses rank 0 %s, rank 1 %s; %.1f s", dt, Cuda.deviceName(0), batch,
          a.bufferHashes().size(), a.bufferHashes().equals(b.bufferHashes()),
          a.trainableHashes().equals(b.trainableHashes()), moved, statistics, Arrays.toString(a.losses()),
          Arrays.toString(b.losses()), seconds));
      assertEquals(2 * steps, a.bufferHashes().size());
      assertEquals(a.bufferHashes(), b.bufferHashes(),
          dt + ": running statistics differ between the ranks at some step");
      assertEquals(a.trainableHashes(), b.trainableHashes(), dt + ": trainable parameters differ between the ranks");
      assertArrayEquals(a.params(), b.params(), dt + ": final parameters and running statistics differ");
      assertTrue(moved > statistics / 2, dt + ": the running statistics were not updated: " + moved + " of "
          + statistics + " moved");
      for (double l : a.losses()) {
        assertTrue(Double.isFinite(l), dt + ": loss " + l);
      }
      assertFalse(Arrays.equals(a.losses(), new double[a.losses().length]));
    }
  }
}
