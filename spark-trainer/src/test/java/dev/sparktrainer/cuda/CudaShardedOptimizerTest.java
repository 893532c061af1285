package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.Bf16;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * Note [sharded optimizer] (train.Trainer) on 2 GPUs: with each rank updating its slices and the slices all-gathered,
 * the ranks end with the same weights and optimizer state, bit for bit, as the unsharded fit (the reduce-scatter's
 * sums are the all-reduce's at W = 2, each slice's update the same arithmetic), with some buckets sharded and some
 * replicated: on the fused bf16 path (the mirror gathered, bf16 gradients, SGD momentum) and in fp32 (the weights
 * gathered, AdamW), and with the per-step non-finite check, which runs after the update.
 */
class CudaShardedOptimizerTest {
  static final ModelSpec MLP = ModelSpec.mlp(96, new int[] {256, 512, 128}, 10, "relu", 0f);

  record Run(float[] params, Map<String, float[]> state, float[] mirror, boolean sharded, String off,
      List<EpochStats> stats) {}

  static List<Run> onTwoGpus(DType compute, DType grads, OptimizerConfig opt, boolean shard, boolean checkNonFinite) {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni();
    return LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60))) {
        HeapRowStore store = CudaFusedPathTest.synthetic(2048, 96, 10, 5);
        TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(64).seed(3).optimizer(opt).build();
        Model m = new Model(MLP, d, compute, grads);
        int gradBytes = grads == DType.BFLOAT16 ? 2 : 4;
        // Many buckets: the first (192 elements) does not split into two aligned slices and stays all-reduced.
        Trainer t = new Trainer(m, cfg, c).gradientBuckets(192L * gradBytes, 16384)
            .allReduceMode(Trainer.AllReduceMode.OVERLAPPED).gemmSmCarveout(0).checkNonFinite(checkNonFinite)
            .shardOptimizer(shard);
        t.initializeWeights();
        SamplerPlan plan = new SamplerPlan(store.rows(), 2, 64, 3, false);
        List<EpochStats> st = t.fit(store, plan.rowsOfRank(c.rank()), (int) plan.stepsPerEpoch());
        Map<String, float[]> state = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : t.optimizer().state().entrySet()) {
          state.put(e.getKey(), host(d, e.getValue()));
        }
        Tensor mirror = m.parameterMirror();
        return new Run(m.parametersToHost(), state, mirror == null ? null : host(d, mirror), t.shardedOptimizer(),
            t.shardingOffReason(), st);
      }
    });
  }

  static void assertSameRuns(List<Run> sharded, List<Run> plain, String what) {
    for (int r = 0; r < 2; r++) {
      assertTrue(sharded.get(r).sharded(), what + ", rank " + r + ": not sharded: " + sharded.get(r).off());
      assertFalse(plain.get(r).sharded(), what + ": the plain run was sharded");
      assertArrayEquals(plain.get(r).params(), sharded.get(r).params(), what + ", rank " + r + ": weights");
      assertEquals(plain.get(r).state().keySet(), sharded.get(r).state().keySet());
      for (String k : plain.get(r).state().keySet()) {
        assertArrayEquals(plain.get(r).state().get(k), sharded.get(r).state().get(k), what + ", rank " + r + ": " + k);
      }
      for (int e = 0; e < 2; e++) {
        assertEquals(plain.get(r).stats().get(e).loss(), sharded.get(r).stats().get(e).loss(), what + ": loss");
      }
    }
    assertArrayEquals(sharded.get(0).params(), sharded.get(1).params(), what + ": the ranks' weights differ");
    assertTrue(sharded.get(0).stats().get(1).loss() < sharded.get(0).stats().get(0).loss(), what + ": loss did not fall");
  }

  @Test
  void bf16MirrorGatheredGivesTheUnshardedBits() {
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    List<Run> plain = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, false, false);
    List<Run> sharded = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, true, false);
    assertSameRuns(sharded, plain, "bf16, SGD momentum");
    for (Run r : sharded) {
      assertNotNull(r.mirror());
      float[] rounded = r.params().clone();
      for (int i = 0; i < rounded.length; i++) {
        rounded[i] = Bf16.round(rounded[i]);
      }
      assertArrayEquals(rounded, r.mirror(), "the gathered mirror = bf16(the consolidated weights)");
    }
    CudaTestLog.note(String.format("sharded optimizer, bf16, 2 GPUs: epoch 2 loss %.5f (unsharded %.5f)",
        sharded.get(0).stats().get(1).loss(), plain.get(0).stats().get(1).loss()));
  }

  @Test
  void fp32WeightsGatheredGiveTheUnshardedBits() {
    OptimizerConfig adamw = OptimizerConfig.adamw(1e-3);
    List<Run> plain = onTwoGpus(DType.FLOAT32, DType.FLOAT32, adamw, false, false);
    List<Run> sharded = onTwoGpus(DType.FLOAT32, DType.FLOAT32, adamw, true, false);
    assertSameRuns(sharded, plain, "fp32, AdamW");
    assertNull(sharded.get(0).mirror());
  }

  /** The per-step non-finite check (nonFinite=fail) runs after the sharded update, and changes nothing else. */
  @Test
  void theNonFiniteCheckRunsAfterTheShardedUpdate() {
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    List<Run> checked = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, true, true);
    List<Run> plain = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, false, false);
    assertSameRuns(checked, plain, "with the per-step non-finite check");
  }
}
