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
    boolean copyEngine; // accepts registrations (Note [copy-engine collectives]) and does all-to-alls
    final List<String> order = new java.util.ArrayList<>(); // the sharded collectives in the order queued

    ShardingRing(dev.sparktrainer.comm.Communicator ring) {
      super(ring, true);
    }

    @Override
    public String registerCopyEngineBuffers(List<? extends Tensor> bufs) {
      if (!copyEngine) {
        return "the test ring has no copy engines";
      }
      calls.merge("register", 1, Integer::sum);
      return null;
    }

    @Override
    public void releaseCopyEngineBuffers() {
      calls.merge("release", 1, Integer::sum);
    }

    /**
     * Each rank's send broadcast in turn; this rank keeps its chunk of each, but its own chunk of recv gets NaN (the
     * contract leaves it unspecified, so a trainer that read it would train NaN).
     */
    @Override
    public void allToAllAsync(Tensor send, Tensor recv) {
      calls.merge("all-to-all", 1, Integer::sum);
      order.add("all-to-all");
      Device d = send.device();
      int n = Math.toIntExact(send.numel());
      int q = n / worldSize();
      Tensor tmp = d.allocate(send.dtype(), n);
      for (int r = 0; r < worldSize(); r++) {
        d.copy(send, tmp);
        ring.broadcast(tmp, r);
        if (r == rank()) {
          d.fill(recv.view((long) r * q, q), Float.NaN);
        } else {
          d.copy(tmp.view((long) rank() * q, q), recv.view((long) r * q, q));
        }
      }
      d.free(tmp);
    }

    @Override
    public void reduceScatterSumAsync(Tensor buf) {
      calls.merge("reduce-scatter", 1, Integer::sum);
      order.add("reduce-scatter");
      ring.allReduceSum(buf); // every slice summed, as the all-reduce would
    }

    @Override
    public void allGatherAsync(Tensor buf) {
      calls.merge("all-gather", 1, Integer::sum);
      order.add("all-gather");
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
    return train(world, opt, bf16, shard, checkNonFinite, clipNorm, store, false);
  }

  static List<Run> train(int world, OptimizerConfig opt, boolean bf16, boolean shard, boolean checkNonFinite,
      double clipNorm, HeapRowStore store, boolean copyEngine) {
    SamplerPlan plan = new SamplerPlan(store.rows(), world, 16, 5, false);
    return LocalLauncher.run(world, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(16).seed(5).optimizer(opt).clipNorm(clipNorm)
          .build();
      try (CpuDevice cpu = new CpuDevice();
          ShardingRing comm = new ShardingRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)))) {
        comm.copyEngine = copyEngine;
        Device d = bf16 ? fused(cpu) : cpu;
        Model m = bf16 ? new Model(SPEC, d, DType.BFLOAT16) : new Model(SPEC, d);
        // Buckets of 384 elements (sharded at 2 and 3 ranks) and a first one of 64 (all-reduced).
        Trainer t = new Trainer(m, cfg, comm).gradientBuckets(256, 1536).allReduceMode(Trainer.AllReduceMode.OVERLAPPED)
            .checkNonFinite(checkNonFinite).shardOptimizer(shard).copyEngineCollectives(copyEngine)
            .layerAlignedBuckets(true); // the same buckets sharded or not: the ring's sums in the same order
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

  /**
   * Note [copy-engine collectives] (cuda.NcclCommunicator): the sharded buckets go as all-to-alls whose chunks the
   * trainer sums (Device.sumSlices) before the update; at W = 2 that is the all-reduce's sum, so the same bits, on the
   * fp32 and the fused bf16 path; at W = 3 the sums' order differs from the ring's, so the weights are close.
   */
  @Test
  void copyEngineAllToAllsGiveTheUnshardedWeights() {
    HeapRowStore data = DataParallelInvariantsTest.data(384);
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    for (boolean bf16 : new boolean[] {false, true}) {
      List<Run> plain = train(2, sgd, bf16, false, false, 0, data, false);
      List<Run> ce = train(2, sgd, bf16, true, true, 0, data, true);
      for (int r = 0; r < 2; r++) {
        Run c = ce.get(r);
        String what = (bf16 ? "bf16" : "fp32") + ", rank " + r;
        assertTrue(c.sharded(), what + ": not sharded: " + c.off());
        assertTrue(c.calls().getOrDefault("all-to-all", 0) > 0 && !c.calls().containsKey("reduce-scatter")
            && c.calls().get("register") == 1 && c.calls().get("release") == 1, what + ": " + c.calls());
        assertArrayEquals(plain.get(r).params(), c.params(), what + ": weights");
        for (String k : plain.get(r).state().keySet()) {
          assertArrayEquals(plain.get(r).state().get(k), c.state().get(k), what + ": " + k);
        }
      }
    }
    List<Run> plain3 = train(3, sgd, false, false, false, 0, data, false);
    List<Run> ce3 = train(3, sgd, false, true, false, 0, data, true);
    for (int r = 0; r < 3; r++) {
      float[] want = plain3.get(r).params();
      float[] got = ce3.get(r).params();
      for (int i = 0; i < want.length; i++) {
        assertEquals(want[i], got[i], 1e-5f + 1e-4f * Math.abs(want[i]), "W=3, rank " + r + " at " + i);
      }
      assertArrayEquals(ce3.get(0).params(), got, "W=3: the ranks' weights differ");
    }
    // not registered: the reduce-scatters as before
    List<Run> refused = train(2, sgd, false, true, false, 0, data, false);
    assertTrue(refused.get(0).calls().containsKey("reduce-scatter"));
    // asked for without sharding: off, and the trainer says why
    List<String> why = LocalLauncher.run(2, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(16).seed(5).optimizer(sgd).build();
      try (CpuDevice cpu = new CpuDevice();
          ShardingRing comm = new ShardingRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)))) {
        comm.copyEngine = true;
        Trainer t = new Trainer(new Model(SPEC, cpu), cfg, comm).gradientBuckets(256, 1536)
            .allReduceMode(Trainer.AllReduceMode.OVERLAPPED).copyEngineCollectives(true);
        t.initializeWeights();
        SamplerPlan plan = new SamplerPlan(data.rows(), 2, 16, 5, false);
        t.fit(data, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
        assertTrue(!t.copyEngineCollectivesUsed() && t.copyEngineCollectivesAsked());
        assertTrue(!comm.calls.containsKey("register"), "registered without sharding: " + comm.calls);
        return t.copyEngineOffReason();
      }
    });
    assertTrue(why.get(0) != null && why.get(0).contains("shardOptimizer"), String.valueOf(why.get(0)));
  }

  /**
   * On copy engines each layer's all-to-alls are queued before the all-gathers of the layer before (whose update they
   * then overlap), and buckets are COPY_ENGINE_BUCKET_BYTES unless set; without copy engines DEFAULT_BUCKET_BYTES.
   */
  @Test
  void copyEngineBucketsAndTheirOrder() {
    HeapRowStore store = DataParallelInvariantsTest.data(64);
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05);
    SamplerPlan plan = new SamplerPlan(store.rows(), 2, 16, 5, false);
    for (boolean ce : new boolean[] {true, false}) {
      List<Map<String, Object>> got = LocalLauncher.run(2, 0, 60, ctx -> {
        TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(16).seed(5).optimizer(sgd).build();
        try (CpuDevice cpu = new CpuDevice();
            ShardingRing comm = new ShardingRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)))) {
          comm.copyEngine = ce;
          Trainer t = new Trainer(new Model(SPEC, cpu), cfg, comm).allReduceMode(Trainer.AllReduceMode.OVERLAPPED)
              .shardOptimizer(true).copyEngineCollectives(true);
          t.initializeWeights();
          t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
          Map<String, Object> out = new LinkedHashMap<>();
          out.put("size", t.bucketBytesUsed());
          t.gradientBuckets(256, 1536);
          t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
          out.put("set", t.bucketBytesUsed());
          return out;
        }
      });
      for (Map<String, Object> g : got) {
        assertEquals(ce ? Trainer.COPY_ENGINE_BUCKET_BYTES : Trainer.DEFAULT_BUCKET_BYTES, g.get("size"), "ce " + ce);
        assertEquals(1536L, g.get("set"));
      }
    }
    // The order of one fit's sharded collectives, with copy engines (all-to-alls) and without (reduce-scatters). At
    // the second layer's signal the last layer's buckets are updated and gathered: on the copy engines after the
    // second layer's all-to-alls are queued, on NCCL's kernels before its reduce-scatters. So the first gather
    // comes later on the copy engines, by the second layer's buckets.
    int[] firstGather = new int[2];
    for (int k = 0; k < 2; k++) {
      boolean ce = k == 0;
      List<List<String>> orders = LocalLauncher.run(2, 0, 60, ctx -> {
        TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(16).seed(5).optimizer(sgd).build();
        try (CpuDevice cpu = new CpuDevice();
            ShardingRing comm = new ShardingRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)))) {
          comm.copyEngine = ce;
          Trainer t = new Trainer(new Model(SPEC, cpu), cfg, comm).gradientBuckets(256, 1536)
              .allReduceMode(Trainer.AllReduceMode.OVERLAPPED).shardOptimizer(true).copyEngineCollectives(true)
              .layerAlignedBuckets(true);
          t.initializeWeights();
          t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
          assertEquals(ce, t.copyEngineCollectivesUsed());
          return List.copyOf(comm.order);
        }
      });
      List<String> step = orders.get(0);
      assertEquals(orders.get(0), orders.get(1), "the ranks' collectives differ");
      String scatter = ce ? "all-to-all" : "reduce-scatter";
      assertTrue(step.contains(scatter) && !step.contains(ce ? "reduce-scatter" : "all-to-all"), String.valueOf(step));
      firstGather[k] = step.indexOf("all-gather");
      assertTrue(firstGather[k] > 0, String.valueOf(step));
      for (String c : step.subList(0, firstGather[k])) {
        assertEquals(scatter, c, String.valueOf(step));
      }
      assertEquals(scatter, step.get(firstGather[k] + (int) step.subList(firstGather[k], step.size()).stream()
          .takeWhile("all-gather"::equals).count()), "after the first gathers: " + step);
    }
    assertTrue(firstGather[0] > firstGather[1], "the copy engines' first gathers come after "
        + firstGather[0] + " all-to-alls, the kernels' after " + firstGather[1] + " reduce-scatters");
  }

  /**
   * A fit that fails after registering (its epoch listener throws once, on every rank) releases nothing; the next fit
   * on the same trainer registers again (the communicator finds its buffers registered) and releases once, at its
   * end, with the weights of an uninterrupted fit.
   */
  @Test
  void aFitAfterAFailedOneReleasesOnceAndEndsAsAnUninterruptedOne() {
    HeapRowStore store = DataParallelInvariantsTest.data(384);
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    List<Run> plain = train(2, sgd, false, false, false, 0, store, false);
    SamplerPlan plan = new SamplerPlan(store.rows(), 2, 16, 5, false);
    List<Map<String, Object>> got = LocalLauncher.run(2, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(16).seed(5).optimizer(sgd).build();
      try (CpuDevice cpu = new CpuDevice();
          ShardingRing comm = new ShardingRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)))) {
        comm.copyEngine = true;
        Model m = new Model(SPEC, cpu);
        Trainer t = new Trainer(m, cfg, comm).gradientBuckets(256, 1536).allReduceMode(Trainer.AllReduceMode.OVERLAPPED)
            .shardOptimizer(true).copyEngineCollectives(true).layerAlignedBuckets(true);
        t.onEpochEnd(EpochListeners.failingOnce());
        t.initializeWeights();
        Map<String, Object> out = new LinkedHashMap<>();
        try {
          t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
        } catch (IllegalStateException expected) {
          out.put("after the failed fit", new java.util.TreeMap<>(comm.calls));
        }
        t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
        out.put("calls", new java.util.TreeMap<>(comm.calls));
        out.put("params", m.parametersToHost());
        out.put("used", t.copyEngineCollectivesUsed());
        return out;
      }
    });
    for (int r = 0; r < 2; r++) {
      Map<String, Object> g = got.get(r);
      @SuppressWarnings("unchecked")
      Map<String, Integer> before = (Map<String, Integer>) g.get("after the failed fit");
      @SuppressWarnings("unchecked")
      Map<String, Integer> calls = (Map<String, Integer>) g.get("calls");
      assertEquals(1, before.get("register"), "rank " + r + ": " + before);
      assertNull(before.get("release"), "rank " + r + ": the failed fit released: " + before);
      assertEquals(2, calls.get("register"), "rank " + r + ": " + calls);
      assertEquals(1, calls.get("release"), "rank " + r + ": " + calls);
      assertTrue((Boolean) g.get("used"));
      assertArrayEquals(plain.get(r).params(), (float[]) g.get("params"), "rank " + r + ": weights");
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
