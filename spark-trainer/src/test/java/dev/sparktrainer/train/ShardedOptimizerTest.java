package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Note [sharded optimizer] (Trainer) on the CPU: through a TCP ring that takes the async path's calls (a reduce-scatter
 * as the ring's all-reduce, an all-gather as one broadcast per rank's slice, so both give exact bits), each rank
 * updating its slices during backward and gathering the others' trains the same bits as the unsharded fit, weights
 * and optimizer state, at 2 and 3 ranks, in fp32 and on a fused bf16 path whose device does not keep the mirror (the
 * fp32 weights are gathered then).
 */
@Timeout(120)
class ShardedOptimizerTest {
  static final ModelSpec SPEC = ModelSpec.builder().input(10).linear(64).relu().linear(32).relu().linear(4).build();

  /** The async ring of AllReduceModeTest, with the sharded path's collectives. */
  static final class ShardingRing extends AllReduceModeTest.CountingAsyncRing {
    ShardingRing(dev.sparktrainer.comm.Communicator ring) {
      super(ring, true);
    }

    @Override
    public void reduceScatterSumAsync(Tensor buf) {
      calls.merge("reduce-scatter", 1, Integer::sum);
      ring.allReduceSum(buf); // every slice summed, as the all-reduce would
    }

    @Override
    public void allGatherAsync(Tensor buf) {
      calls.merge("all-gather", 1, Integer::sum);
      int n = Math.toIntExact(buf.numel() / worldSize());
      for (int r = 0; r < worldSize(); r++) {
        ring.broadcast(buf.view((long) r * n, n), r);
      }
    }
  }

  record Run(float[] params, Map<String, float[]> state, Map<String, Integer> calls, boolean sharded, String off,
      String failure, List<float[]> epochState) {}

  /** A CPU device that asks for the fused mixed-precision path (bf16 mirror, fused linears). */
  static Device fused(CpuDevice cpu) {
    return (Device) Proxy.newProxyInstance(Device.class.getClassLoader(), new Class<?>[] {Device.class},
        (proxy, method, args) -> {
          if (method.getDeclaringClass() == Object.class) {
            return switch (method.getName()) {
              case "equals" -> proxy == args[0];
              case "hashCode" -> System.identityHashCode(proxy);
              default -> "Fused[" + cpu + "]";
            };
          }
          if (method.getName().equals("prefersFusedLinear")) {
            return true;
          }
          try {
            return method.invoke(cpu, args);
          } catch (InvocationTargetException e) {
            throw e.getCause();
          }
        });
  }

  static List<Run> train(int world, OptimizerConfig opt, boolean bf16, boolean shard) {
    return train(world, opt, bf16, shard, false, 0, DataParallelInvariantsTest.data(384));
  }

  static List<Run> train(int world, OptimizerConfig opt, boolean bf16, boolean shard, boolean checkNonFinite,
      double clipNorm, HeapRowStore store) {
    SamplerPlan plan = new SamplerPlan(store.rows(), world, 16, 5, false);
    return LocalLauncher.run(world, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(16).seed(5).optimizer(opt).clipNorm(clipNorm)
          .build();
      try (CpuDevice cpu = new CpuDevice();
          ShardingRing comm = new ShardingRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)))) {
        Device d = bf16 ? fused(cpu) : cpu;
        Model m = bf16 ? new Model(SPEC, d, DType.BFLOAT16) : new Model(SPEC, d);
        // Buckets of 384 elements (sharded at 2 and 3 ranks) and a first one of 64 (all-reduced).
        Trainer t = new Trainer(m, cfg, comm).gradientBuckets(256, 1536).allReduceMode(Trainer.AllReduceMode.OVERLAPPED)
            .checkNonFinite(checkNonFinite).shardOptimizer(shard);
        // what an epoch listener reads: the optimizer state, gathered whole first
        List<float[]> epochState = new java.util.ArrayList<>();
        t.onEpochEnd(e -> {
          for (Tensor s : t.optimizer().state().values()) {
            float[] h = new float[Math.toIntExact(s.numel())];
            cpu.download(s, h, 0);
            epochState.add(h);
          }
        });
        t.initializeWeights();
        try {
          t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
        } catch (NonFiniteException e) {
          return new Run(null, null, comm.calls, t.shardedOptimizer(), t.shardingOffReason(), e.getMessage(), null);
        }
        Map<String, float[]> state = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : t.optimizer().state().entrySet()) {
          float[] h = new float[Math.toIntExact(e.getValue().numel())];
          cpu.download(e.getValue(), h, 0);
          state.put(e.getKey(), h);
        }
        return new Run(m.parametersToHost(), state, comm.calls, t.shardedOptimizer(), t.shardingOffReason(), null,
            epochState);
      }
    });
  }

  static void assertSameBits(List<Run> sharded, List<Run> plain, String what) {
    for (int r = 0; r < sharded.size(); r++) {
      Run s = sharded.get(r);
      assertTrue(s.sharded(), what + ": not sharded: " + s.off());
      assertNull(s.off());
      assertTrue(s.calls().getOrDefault("reduce-scatter", 0) > 0 && s.calls().getOrDefault("all-gather", 0) > 0
          && s.calls().getOrDefault("overlapped", 0) > 0, what + ": sharded and all-reduced buckets: " + s.calls());
      assertArrayEquals(plain.get(r).params(), s.params(), what + ", rank " + r + ": weights");
      for (String k : plain.get(r).state().keySet()) {
        assertArrayEquals(plain.get(r).state().get(k), s.state().get(k), what + ", rank " + r + ": " + k);
      }
      assertEquals(null, plain.get(r).calls().get("reduce-scatter"), what + ": the plain run reduce-scattered");
      assertEquals(plain.get(r).epochState().size(), s.epochState().size());
      for (int k = 0; k < s.epochState().size(); k++) {
        assertArrayEquals(plain.get(r).epochState().get(k), s.epochState().get(k),
            what + ", rank " + r + ": optimizer state seen by the epoch listener #" + k);
      }
    }
  }

  @Test
  void sgdMomentumOnTwoAndThreeRanks() {
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    for (int world : new int[] {2, 3}) {
      assertSameBits(train(world, sgd, false, true), train(world, sgd, false, false), "fp32 SGD, W=" + world);
    }
  }

  /**
   * The per-step non-finite check runs after the sharded update (checkFiniteSharded) and fails every rank alike;
   * clipping needs the whole gradients first and trains unsharded.
   */
  @Test
  void theNonFiniteCheckFailsEveryRankAndClippingStaysUnsharded() {
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    HeapRowStore data = DataParallelInvariantsTest.data(384);
    assertSameBits(train(2, sgd, false, true, true, 0, data), train(2, sgd, false, false, true, 0, data),
        "with the per-step check");
    float[] x = new float[384 * 10];
    int[] y = new int[384];
    for (int i = 0; i < 384; i++) {
      y[i] = i % 4;
      for (int j = 0; j < 10; j++) {
        x[i * 10 + j] = (i * 10 + j) % 7 * 0.1f;
      }
    }
    x[200 * 10 + 3] = Float.NaN; // one row: one rank's gradients at one step
    List<Run> nan = train(2, sgd, false, true, true, 0, new HeapRowStore(x, y, 10));
    for (Run r : nan) {
      assertTrue(r.sharded());
      assertTrue(r.failure() != null && r.failure().contains("NaN or infinite"), "every rank fails: " + r.failure());
    }
    assertTrue(nan.get(0).failure().contains("this rank") || nan.get(1).failure().contains("this rank"));
    List<Run> clipped = train(2, sgd, false, true, false, 1.0, data);
    for (Run r : clipped) {
      assertTrue(!r.sharded() && r.off().contains("clipNorm"), r.off());
      assertEquals(null, r.calls().get("reduce-scatter"));
    }
  }

  @Test
  void adamwAndTheFusedBf16Path() {
    OptimizerConfig adamw = OptimizerConfig.adamw(1e-3).withWeightDecay(0.01);
    assertSameBits(train(2, adamw, false, true), train(2, adamw, false, false), "fp32 AdamW");
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    assertSameBits(train(2, sgd, true, true), train(2, sgd, true, false), "bf16 fused path, SGD");
  }
}
