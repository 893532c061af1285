package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.optim.OptimizerConfig;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Note [in-order gradient all-reduce] on the CPU: the trainer's bucket path, driven through a TCP ring that
 * calls itself asynchronous (each bucket is summed when started), picks allReduceSumAsync or allReduceSumInOrder
 * as AllReduceMode says, and the weights are the same bits in every mode.
 */
@Timeout(120)
class AllReduceModeTest {
  /**
   * A ring that takes the async path's calls and counts which kind each bucket got; it also keeps the joins a real
   * asynchronous communicator would still be running (the ring has summed them already), as Note [bucket wait lag]
   * lets them stand, and the most that stood when a step started its buckets.
   */
  static class CountingAsyncRing implements Communicator {
    final Communicator ring;
    final boolean oneHost;
    final Map<String, Integer> calls = new TreeMap<>();
    int unjoined; // buckets started since the last join
    int joins; // joins not waited for
    int mostJoinsAtBucketStart;
    final Map<Integer, Integer> keeps = new TreeMap<>(); // awaitAsyncBefore(keep) calls by keep

    private void started() {
      if (unjoined == 0) {
        mostJoinsAtBucketStart = Math.max(mostJoinsAtBucketStart, joins);
      }
      unjoined++;
    }

    @Override
    public void joinAsync() {
      if (unjoined > 0) {
        joins++;
        unjoined = 0;
      }
    }

    @Override
    public void awaitAsync() {
      joinAsync();
      joins = 0;
    }

    @Override
    public void awaitAsyncBefore(int keep) {
      keeps.merge(keep, 1, Integer::sum);
      joins = Math.min(joins, keep);
    }

    CountingAsyncRing(Communicator ring, boolean oneHost) {
      this.ring = ring;
      this.oneHost = oneHost;
    }

    @Override
    public boolean supportsAsync() {
      return true;
    }

    @Override
    public void allReduceSumAsync(Tensor buf) {
      started();
      calls.merge("overlapped", 1, Integer::sum);
      ring.allReduceSum(buf);
    }

    @Override
    public void allReduceSumInOrder(Tensor buf) {
      started();
      calls.merge("in order", 1, Integer::sum);
      ring.allReduceSum(buf);
    }

    @Override
    public boolean allRanksOnOneHost() {
      return oneHost;
    }

    @Override
    public int rank() {
      return ring.rank();
    }

    @Override
    public int worldSize() {
      return ring.worldSize();
    }

    @Override
    public void allReduceSum(Tensor buf) {
      ring.allReduceSum(buf);
    }

    @Override
    public void broadcast(Tensor buf, int root) {
      ring.broadcast(buf, root);
    }

    @Override
    public void abort() {
      ring.abort();
    }

    @Override
    public void close() {
      ring.close();
    }
  }

  record Run(float[] params, Map<String, Integer> calls, int mostJoins, Map<Integer, Integer> keeps) {}

  static List<Run> train(Trainer.AllReduceMode mode, boolean oneHost) {
    return train(mode, oneHost, 1);
  }

  static List<Run> train(Trainer.AllReduceMode mode, boolean oneHost, int lag) {
    HeapRowStore store = DataParallelInvariantsTest.data(256);
    SamplerPlan plan = new SamplerPlan(store.rows(), 2, 16, 5, false);
    return LocalLauncher.run(2, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(16).seed(5)
          .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
      try (CpuDevice d = new CpuDevice();
          CountingAsyncRing comm = new CountingAsyncRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)),
              oneHost)) {
        Model m = new Model(DataParallelInvariantsTest.SPEC, d);
        // Tiny buckets (256 B, then 512 B): the model's 260 parameters make several.
        // No per-step non-finite check: it reads the gradients, so the host waits for every bucket before it.
        Trainer t = new Trainer(m, cfg, comm).gradientBuckets(256, 512).allReduceMode(mode).bucketWaitLag(lag)
            .checkNonFinite(false);
        t.initializeWeights();
        t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
        return new Run(m.parametersToHost(), comm.calls, comm.mostJoinsAtBucketStart, comm.keeps);
      }
    });
  }

  @Test
  void modesPickTheCallAndTrainTheSameBits() {
    long steps = 2 * new SamplerPlan(256, 2, 16, 5, false).stepsPerEpoch();
    List<Run> auto = train(Trainer.AllReduceMode.AUTO, true);
    List<Run> overlapped = train(Trainer.AllReduceMode.OVERLAPPED, true);
    List<Run> inOrder = train(Trainer.AllReduceMode.IN_ORDER, false);
    List<Run> autoAcrossHosts = train(Trainer.AllReduceMode.AUTO, false);
    for (int rank = 0; rank < 2; rank++) {
      Map<String, Integer> a = auto.get(rank).calls();
      assertEquals(List.of("in order"), new ArrayList<>(a.keySet()), "AUTO on one host, small gradients: " + a);
      // Note [one in-order all-reduce]: in order, one all-reduce of the whole buffer per step; overlapped, buckets.
      assertEquals(Map.of("in order", (int) steps), a, "one in-order all-reduce per step");
      assertEquals(Map.of("in order", (int) steps), inOrder.get(rank).calls());
      int calls = overlapped.get(rank).calls().get("overlapped");
      assertTrue(calls % steps == 0 && calls / steps > 1, "several buckets per step: " + overlapped.get(rank).calls()
          + ", " + steps + " steps");
      assertEquals(Map.of("overlapped", calls), autoAcrossHosts.get(rank).calls(), "AUTO across hosts overlaps");
      assertArrayEquals(auto.get(rank).params(), overlapped.get(rank).params(), "rank " + rank);
      assertArrayEquals(auto.get(rank).params(), inOrder.get(rank).params(), "rank " + rank);
      assertArrayEquals(auto.get(rank).params(), autoAcrossHosts.get(rank).params(), "rank " + rank);
    }
    assertArrayEquals(auto.get(0).params(), auto.get(1).params(), "ranks agree");
  }

  /**
   * Note [bucket wait lag]: with lag 2 a step starts its buckets while the step before last's are still joined (at
   * most one join stands: the previous step's), with lag 1 none does; the weights are the same bits.
   */
  @Test
  void theBucketWaitLagLeavesOneStepRunningAndTheSameBits() {
    for (Trainer.AllReduceMode mode : new Trainer.AllReduceMode[] {Trainer.AllReduceMode.IN_ORDER,
        Trainer.AllReduceMode.OVERLAPPED}) {
      List<Run> one = train(mode, true, 1);
      List<Run> two = train(mode, true, 2);
      for (int rank = 0; rank < 2; rank++) {
        assertEquals(0, one.get(rank).mostJoins(), mode + ": lag 1 waits for the previous step's buckets");
        assertEquals(1, two.get(rank).mostJoins(), mode + ": lag 2 leaves the previous step's buckets running");
        assertEquals(java.util.Set.of(0), one.get(rank).keeps().keySet(), mode + ": " + one.get(rank).keeps());
        assertEquals(java.util.Set.of(1), two.get(rank).keeps().keySet(), mode + ": " + two.get(rank).keeps());
        assertArrayEquals(one.get(rank).params(), two.get(rank).params(), mode + ", rank " + rank);
      }
    }
    org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
        () -> new Trainer(new Model(DataParallelInvariantsTest.SPEC, new CpuDevice()), TrainerConfig.builder()
            .epochs(1).batchSize(4).build(), new dev.sparktrainer.comm.LocalCommunicator()).bucketWaitLag(3));
  }

  /**
   * The automatic carve-out on one host: the device's choice, three quarters of it with bf16 gradients (Note [bf16
   * gradients] in nn.Model), none across hosts.
   */
  @Test
  void theAutomaticCarveoutIsSmallerWithBf16Gradients() {
    try (CpuDevice cpu = new CpuDevice()) {
      Device fused = (Device) java.lang.reflect.Proxy.newProxyInstance(Device.class.getClassLoader(),
          new Class<?>[] {Device.class}, (proxy, method, args) -> {
            switch (method.getName()) {
              case "autoGemmSmCarveout":
                return 32;
              case "prefersFusedLinear":
                return true;
              default:
                try {
                  return method.invoke(cpu, args);
                } catch (java.lang.reflect.InvocationTargetException e) {
                  throw e.getCause();
                }
            }
          });
      dev.sparktrainer.nn.ModelSpec mlp = dev.sparktrainer.nn.ModelSpec.mlp(8, new int[] {16}, 3, "relu", 0f);
      TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(4).build();
      for (boolean oneHost : new boolean[] {true, false}) {
        CountingAsyncRing comm = new CountingAsyncRing(new dev.sparktrainer.comm.LocalCommunicator(), oneHost);
        Model fp32 = new Model(mlp, fused, dev.sparktrainer.engine.DType.BFLOAT16, dev.sparktrainer.engine.DType.FLOAT32);
        Model bf16 = new Model(mlp, fused, dev.sparktrainer.engine.DType.BFLOAT16,
            dev.sparktrainer.engine.DType.BFLOAT16);
        assertEquals(dev.sparktrainer.engine.DType.BFLOAT16, bf16.gradientDType());
        assertEquals(oneHost ? 32 : 0, new Trainer(fp32, cfg, comm).resolvedGemmSmCarveout(true));
        assertEquals(oneHost ? 24 : 0, new Trainer(bf16, cfg, comm).resolvedGemmSmCarveout(true));
        assertEquals(0, new Trainer(bf16, cfg, comm).resolvedGemmSmCarveout(false), "no buckets, no carve-out");
        assertEquals(5, new Trainer(bf16, cfg, comm).gemmSmCarveout(5).resolvedGemmSmCarveout(true), "as set");
      }
    }
  }

  /** A CpuDevice that records the SM carve-out the trainer asks for, and how many matmuls run under one. */
  static final class CarveRecord {
    final List<Integer> settings = new ArrayList<>();
    int carved; // the carve-out in force
    int matmulsCarved;
    int matmulsPlain;
    int bucketsCarved; // buckets started while a carve-out was in force
  }

  static Device recording(CpuDevice cpu, CarveRecord rec) {
    return (Device) java.lang.reflect.Proxy.newProxyInstance(Device.class.getClassLoader(),
        new Class<?>[] {Device.class}, (proxy, method, args) -> {
          if (method.getName().equals("autoGemmSmCarveout")) {
            return 8; // as a GPU would choose
          }
          if (method.getName().equals("gemmSmCarveout")) {
            rec.settings.add((Integer) args[0]);
            rec.carved = (Integer) args[0];
          } else if (method.getName().equals("matmul")) {
            if (rec.carved > 0) {
              rec.matmulsCarved++;
            } else {
              rec.matmulsPlain++;
            }
          }
          try {
            return method.invoke(cpu, args);
          } catch (java.lang.reflect.InvocationTargetException e) {
            throw e.getCause();
          }
        });
  }

  /**
   * Note [GEMM SM carve-out] (cuda.CudaDevice): the trainer asks for the carve-out around each backward whose
   * buckets overlap it, and clears it before the optimizer, so backward's matmuls run under it and forward's do
   * not; buckets in order never get one; the automatic choice is the device's (8 here) on one host. The CPU engine
   * ignores it: the same bits as without.
   */
  @Test
  void theGemmCarveoutCoversOverlappedBackwardsOnly() {
    HeapRowStore store = DataParallelInvariantsTest.data(256);
    SamplerPlan plan = new SamplerPlan(store.rows(), 2, 16, 5, false);
    long steps = 2 * plan.stepsPerEpoch();
    Map<String, List<Object[]>> runs = new TreeMap<>();
    for (Trainer.AllReduceMode mode : new Trainer.AllReduceMode[] {Trainer.AllReduceMode.IN_ORDER,
        Trainer.AllReduceMode.OVERLAPPED}) {
      for (int sms : new int[] {0, 8, Trainer.GEMM_SM_CARVEOUT_AUTO}) {
        runs.put(mode + "/" + sms, LocalLauncher.run(2, 0, 60, ctx -> {
          TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(16).seed(5)
              .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
          CarveRecord rec = new CarveRecord();
          try (CpuDevice cpu = new CpuDevice();
              CountingAsyncRing comm = new CountingAsyncRing(RingCommunicator.create(ctx, Duration.ofSeconds(30)),
                  true) {
                @Override
                public void allReduceSumAsync(Tensor buf) {
                  if (rec.carved > 0) {
                    rec.bucketsCarved++;
                  }
                  super.allReduceSumAsync(buf);
                }
              }) {
            Model m = new Model(DataParallelInvariantsTest.SPEC, recording(cpu, rec));
            Trainer t = new Trainer(m, cfg, comm).gradientBuckets(256, 512).allReduceMode(mode).gemmSmCarveout(sms);
            t.initializeWeights();
            t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
            return new Object[] {m.parametersToHost(), rec};
          }
        }));
      }
    }
    float[] reference = (float[]) runs.get("IN_ORDER/0").get(0)[0];
    for (Map.Entry<String, List<Object[]>> e : runs.entrySet()) {
      for (Object[] r : e.getValue()) {
        assertArrayEquals(reference, (float[]) r[0], e.getKey() + ": the carve-out changed the CPU's bits");
        CarveRecord rec = (CarveRecord) r[1];
        if (!e.getKey().equals("OVERLAPPED/8") && !e.getKey().equals("OVERLAPPED/-1")) {
          assertTrue(rec.settings.stream().allMatch(x -> x == 0), e.getKey() + ": " + rec.settings);
          assertEquals(0, rec.matmulsCarved, e.getKey());
          continue;
        }
        // The check at the start of the fit (8, 0), then 8 and 0 around every step's backward.
        assertEquals(2 + 2 * steps, rec.settings.size(), "settings: " + rec.settings);
        for (int i = 0; i < rec.settings.size(); i++) {
          assertEquals(i % 2 == 0 ? 8 : 0, rec.settings.get(i), "setting " + i + " of " + rec.settings);
        }
        assertTrue(rec.matmulsCarved > 0 && rec.matmulsPlain > 0, "backward's matmuls carved (" + rec.matmulsCarved
            + "), forward's not (" + rec.matmulsPlain + ")");
        assertTrue(rec.bucketsCarved > 0, "buckets started during backward: " + rec.bucketsCarved);
      }
    }
    org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
        () -> new Trainer(new Model(DataParallelInvariantsTest.SPEC, new CpuDevice()), TrainerConfig.builder()
            .epochs(1).batchSize(4).build(), new dev.sparktrainer.comm.LocalCommunicator()).gemmSmCarveout(-2));
  }
}
