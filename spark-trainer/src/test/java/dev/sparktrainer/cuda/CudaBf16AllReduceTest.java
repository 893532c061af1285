package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.time.Duration;
import java.util.List;
import java.util.Locale;
import org.junit.jupiter.api.Test;

/**
 * The bf16 gradient all-reduce (Trainer.bf16GradientAllReduce) on 2 GPUs over NCCL: the ranks end every run
 * with bitwise identical parameters (every rank widens the same bf16 sums), and training stays close to the
 * fp32 all-reduce: after 20 SGD-momentum steps of an MLP in bf16 mixed precision the parameters differ by
 * <= 1e-2 normwise (the gradients lose 8 of their 24 bits once per step; both runs also compute in bf16).
 */
class CudaBf16AllReduceTest {
  static final int BATCH = 64;
  static final int STEPS = 20;

  static float[][] train(boolean bf16Grads) {
    ModelSpec spec = ModelSpec.mlp(256, new int[] {512, 512}, 10, "relu", 0f);
    float[] xs = CudaCnnTrainingTest.gaussian(2 * BATCH * STEPS * 256, 1);
    int[] ys = CudaCnnTrainingTest.labels(2 * BATCH * STEPS, 10, 2);
    HeapRowStore store = new HeapRowStore(xs, ys, 256);
    TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(BATCH).seed(3)
        .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
    List<float[]> params = LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(120))) {
        Model m = new Model(spec, d, DType.BFLOAT16);
        Trainer t = new Trainer(m, cfg, c).bf16GradientAllReduce(bf16Grads).gradientBuckets(64 << 10, 256 << 10);
        t.initializeWeights();
        t.fit(store, CudaCnnTrainingTest.range(ctx.rank() * BATCH * STEPS, BATCH * STEPS), STEPS);
        return m.parametersToHost();
      }
    });
    return new float[][] {params.get(0), params.get(1)};
  }

  @Test
  void ranksStayIdenticalAndCloseToTheFp32AllReduce() {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni();
    float[][] f = train(false);
    float[][] b = train(true);
    assertArrayEquals(b[0], b[1], 0f, "bf16 all-reduce: ranks differ");
    assertArrayEquals(f[0], f[1], 0f, "fp32 all-reduce: ranks differ");
    double e = CudaTestSupport.normwiseRelErr(f[0], b[0]);
    CudaTestLog.record(String.format(Locale.ROOT, "MLP 256-512-512-10 bf16, 2 GPUs, %d steps: parameters with the bf16"
        + " gradient all-reduce vs fp32 (normwise; ranks bitwise identical in both)", STEPS), e, 3e-2);
    // Measured on 2x H100: 1.0e-2 after 20 steps (each step rounds the summed gradients to bf16, 2^-9 relative,
    // and SGD with momentum carries the differences forward); 3e-2 leaves room for another card or order.
    assertTrue(e <= 3e-2, "bf16 vs fp32 all-reduce: normwise " + e);
    assertTrue(e > 0, "the bf16 all-reduce changed nothing: is it on?");
  }
}
