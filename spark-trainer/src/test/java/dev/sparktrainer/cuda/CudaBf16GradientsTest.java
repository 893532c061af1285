package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
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
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Note [bf16 gradients] on the GPU: one fused backward writes the fp32 path's gradients rounded to bf16 (the bias
 * gradients bit for bit, the dW GEMMs within one bf16 step: cuBLASLt may pick another algorithm for a bf16
 * output), the 4-wide SGD kernel reads bf16 gradients with the CPU engine's bits, and the trainer all-reduces
 * them as they are on 2 GPUs (ranks identical after every step, buckets or not) and learns as with fp32
 * gradients.
 */
class CudaBf16GradientsTest {
  static final ModelSpec MLP = ModelSpec.mlp(96, new int[] {256, 512, 128}, 10, "relu", 0f);
  static CudaDevice gpu;

  @BeforeAll
  static void open() {
    CudaTestSupport.assumeGpu();
    gpu = new CudaDevice(0);
  }

  @AfterAll
  static void close() {
    if (gpu != null) {
      gpu.close();
    }
  }

  @Test
  void oneBackwardWritesTheFp32GradientsRoundedToBf16() {
    float[] x = CudaFusedPathTest.rand(64 * 96, 31);
    float[] d = CudaFusedPathTest.rand(64 * 10, 32);
    for (int i = 0; i < d.length; i++) {
      d[i] /= 64;
    }
    float[][] g = new float[2][];
    Model[] models = new Model[2];
    DType[] kinds = {DType.FLOAT32, DType.BFLOAT16};
    for (int k = 0; k < 2; k++) {
      Model m = new Model(MLP, gpu, DType.BFLOAT16, kinds[k]);
      assertEquals(kinds[k], m.gradientDType());
      m.initialize(5);
      Tensor xt = CudaFusedPathTest.up(gpu, DType.FLOAT32, x, 64, 96);
      Tensor dOut = CudaFusedPathTest.up(gpu, m.outputGradDType(), d, 64, 10);
      Layer.Context ctx = new Layer.Context(true, 1, 0);
      m.forward(xt, ctx);
      m.backward(dOut, ctx, true, null);
      g[k] = host(gpu, m.parameters().grads());
      models[k] = m;
    }
    int beyondOneStep = 0;
    int inexact = 0;
    for (ParameterSet.Entry e : models[0].parameters().entries()) {
      boolean bias = e.name().endsWith(".bias");
      for (long i = e.offset(); i < e.offset() + e.numel(); i++) {
        float want = CpuDevice.roundBf16(g[0][(int) i]);
        float got = g[1][(int) i];
        inexact += want != g[0][(int) i] ? 1 : 0;
        if (bias) {
          assertEquals(want, got, 0f, e.name() + "[" + (i - e.offset()) + "]: the same column sum, rounded");
        } else if (want != got && Math.abs(want - got) > Math.ulp(want) * 65536f) { // one bf16 step = 2^16 fp32 ulps
          beyondOneStep++;
        }
      }
    }
    assertTrue(inexact > 0, "the fp32 gradients should not all be bf16 values already");
    assertEquals(0, beyondOneStep, "dW elements more than one bf16 step from the rounded fp32 gradient");
  }

  @Test
  void sgdReadsBf16GradientsWithTheCpuBits() {
    int n = 100_000; // 4 elements per thread
    float[] p = CudaFusedPathTest.rand(n, 41);
    float[] gr = CudaFusedPathTest.rand(n, 42);
    Tensor params = CudaFusedPathTest.up(gpu, DType.FLOAT32, p, n);
    Tensor grads = CudaFusedPathTest.up(gpu, DType.BFLOAT16, gr, n);
    Tensor mom = gpu.allocate(DType.FLOAT32, n);
    Tensor mirror = gpu.allocate(DType.BFLOAT16, n);
    gpu.registerMirror(params, mirror);
    try (CpuDevice cpu = new CpuDevice()) {
      Tensor cp = CudaFusedPathTest.up(cpu, DType.FLOAT32, p, n);
      Tensor cg = CudaFusedPathTest.up(cpu, DType.BFLOAT16, gr, n);
      Tensor cm = cpu.allocate(DType.FLOAT32, n);
      for (int step = 0; step < 3; step++) {
        gpu.sgdStep(params, grads, mom, 0.1f, 0.9f, step == 2, 1e-4f, step == 0);
        cpu.sgdStep(cp, cg, cm, 0.1f, 0.9f, step == 2, 1e-4f, step == 0);
        assertArrayEquals(CudaTestSupport.host(cpu, cp), host(gpu, params), "step " + step + ": parameters");
        assertArrayEquals(CudaTestSupport.host(cpu, cm), host(gpu, mom), "step " + step + ": momentum");
      }
      Tensor rounded = cpu.allocate(DType.BFLOAT16, n);
      cpu.copy(cp, rounded);
      gpu.refreshMirror(params, mirror);
      assertArrayEquals(CudaTestSupport.host(cpu, rounded), host(gpu, mirror), "mirror = bf16(params)");
    }
  }

  record Run(List<Integer> hashes, float[] params, List<EpochStats> stats) {}

  static Run train(Device d, dev.sparktrainer.comm.Communicator c, DType grads, long bucketBytes,
      Trainer.AllReduceMode mode) {
    HeapRowStore store = CudaFusedPathTest.synthetic(2048, 96, 10, 5);
    TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(64).seed(3)
        .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
    Model m = new Model(MLP, d, DType.BFLOAT16, grads);
    assertEquals(grads, m.gradientDType());
    List<Integer> hashes = new ArrayList<>();
    // No GEMM SM carve-out: on fewer SMs cuBLASLt may choose other algorithms, and the modes must give the same bits.
    Trainer t = new Trainer(m, cfg, c).gradientBuckets(bucketBytes, bucketBytes).allReduceMode(mode).gemmSmCarveout(0)
        .onStep(s -> hashes.add(Arrays.hashCode(m.parametersToHost())));
    t.initializeWeights();
    SamplerPlan plan = new SamplerPlan(store.rows(), c.worldSize(), 64, 3, false);
    List<EpochStats> st = t.fit(store, plan.rowsOfRank(c.rank()), (int) plan.stepsPerEpoch());
    return new Run(hashes, m.parametersToHost(), st);
  }

  static List<Run> onTwoGpus(DType grads, long bucketBytes, Trainer.AllReduceMode mode) {
    return LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60))) {
        return train(d, c, grads, bucketBytes, mode);
      }
    });
  }

  @Test
  void trainsLikeFp32GradientsOnOneGpu() {
    Run fp32 = train(gpu, new LocalCommunicator(), DType.FLOAT32, 25 << 20, Trainer.AllReduceMode.AUTO);
    Run bf16 = train(gpu, new LocalCommunicator(), DType.BFLOAT16, 25 << 20, Trainer.AllReduceMode.AUTO);
    for (int e = 0; e < 2; e++) {
      double a = fp32.stats().get(e).loss();
      double b = bf16.stats().get(e).loss();
      CudaTestLog.note(String.format("bf16 gradients, 1 GPU, epoch %d: loss %.5f (fp32 gradients %.5f)", e, b, a));
      assertTrue(Math.abs(a - b) <= 0.02 * a, "epoch " + e + ": " + b + " vs " + a);
    }
    assertTrue(bf16.stats().get(1).loss() < bf16.stats().get(0).loss(), "loss did not fall: " + bf16.stats());
    // Drift, not parity (the first test checks one backward): after 32 SGD-momentum steps on random labels the
    // rounding differences grow as those between the GPU and CPU bf16 paths do (CudaFusedPathTest, bound 0.1);
    // measured 6.49e-2 on an H100 (2026-11-26), which failed a first bound of 2e-2 while the losses agreed to 1e-4.
    CudaTestSupport.assertCloseNormwise(fp32.params(), bf16.params(), 0.1, "bf16 vs fp32 gradients: params");
  }

  @Test
  void allReducedAsTheyAreOnTwoGpus() {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni();
    List<Run> small = onTwoGpus(DType.BFLOAT16, 16384, Trainer.AllReduceMode.OVERLAPPED); // many buckets
    assertEquals(small.get(0).hashes(), small.get(1).hashes(), "ranks differ at some step");
    assertEquals(32, small.get(0).hashes().size(), "steps: 2048 rows / 2 ranks / batch 64 x 2 epochs");
    List<Run> whole = onTwoGpus(DType.BFLOAT16, 1L << 40, Trainer.AllReduceMode.IN_ORDER); // one all-reduce
    assertArrayEquals(whole.get(0).params(), small.get(0).params(), "buckets vs one all-reduce: one addition each");
    List<Run> fp32 = onTwoGpus(DType.FLOAT32, 25 << 20, Trainer.AllReduceMode.AUTO);
    for (int e = 0; e < 2; e++) {
      double a = fp32.get(0).stats().get(e).loss();
      double b = small.get(0).stats().get(e).loss();
      CudaTestLog.note(String.format("bf16 gradients, 2 GPUs, epoch %d: loss %.5f (fp32 gradients %.5f)", e, b, a));
      assertTrue(Math.abs(a - b) <= 0.02 * a, "epoch " + e + ": " + b + " vs " + a);
    }
    CudaTestSupport.assertCloseNormwise(fp32.get(0).params(), small.get(0).params(), 0.1, // as on one GPU
        "2 GPUs, bf16 vs fp32 gradients: params");
  }
}
