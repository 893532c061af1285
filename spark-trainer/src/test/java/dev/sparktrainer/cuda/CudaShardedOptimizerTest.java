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
import dev.sparktrainer.engine.GradientSlices;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochListeners;
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
      List<EpochStats> stats, boolean copyEngine, String copyEngineOff) {}

  static List<Run> onTwoGpus(DType compute, DType grads, OptimizerConfig opt, boolean shard, boolean checkNonFinite) {
    return onTwoGpus(compute, grads, opt, shard, checkNonFinite, false, 1);
  }

  /** copyEngine: Note [copy-engine collectives] (registrable memory, the trainer's switch); fits: fit calls. */
  static List<Run> onTwoGpus(DType compute, DType grads, OptimizerConfig opt, boolean shard, boolean checkNonFinite,
      boolean copyEngine, int fits) {
    return onTwoGpus(compute, grads, opt, shard, checkNonFinite, copyEngine, fits, false);
  }

  /**
   * failFirstFit: the epoch listener throws at the first epoch's end, once, so the first fit fails after its first
   * epoch (on every rank) and the runs' stats are the later fits'.
   */
  static List<Run> onTwoGpus(DType compute, DType grads, OptimizerConfig opt, boolean shard, boolean checkNonFinite,
      boolean copyEngine, int fits, boolean failFirstFit) {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni();
    return LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60))) {
        d.preferRegistrableMemory(copyEngine);
        HeapRowStore store = CudaFusedPathTest.synthetic(2048, 96, 10, 5);
        TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(64).seed(3).optimizer(opt).build();
        Model m = new Model(MLP, d, compute, grads);
        int gradBytes = grads == DType.BFLOAT16 ? 2 : 4;
        // Many buckets: the first (192 elements) does not split into two aligned slices and stays all-reduced.
        Trainer t = new Trainer(m, cfg, c).gradientBuckets(192L * gradBytes, 16384)
            .allReduceMode(Trainer.AllReduceMode.OVERLAPPED).gemmSmCarveout(0).checkNonFinite(checkNonFinite)
            .shardOptimizer(shard).copyEngineCollectives(copyEngine).layerAlignedBuckets(true);
        if (failFirstFit) { // only then: an epoch listener makes each sharded epoch end consolidated
          t.onEpochEnd(EpochListeners.failingOnce());
        }
        t.initializeWeights();
        SamplerPlan plan = new SamplerPlan(store.rows(), 2, 64, 3, false);
        List<EpochStats> st = new java.util.ArrayList<>();
        for (int f = 0; f < fits; f++) { // a later fit (its epochs done: no steps) registers the buffers again
          try {
            st.addAll(t.fit(store, plan.rowsOfRank(c.rank()), (int) plan.stepsPerEpoch()));
            assertFalse(failFirstFit && f == 0, "the first fit should have failed");
          } catch (IllegalStateException expected) {
            assertTrue(failFirstFit && f == 0, "fit " + f + " failed: " + expected);
            assertEquals(copyEngine, t.copyEngineCollectivesUsed(), "the failed fit: " + t.copyEngineOffReason());
          }
        }
        Map<String, float[]> state = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : t.optimizer().state().entrySet()) {
          state.put(e.getKey(), host(d, e.getValue()));
        }
        Tensor mirror = m.parameterMirror();
        return new Run(m.parametersToHost(), state, mirror == null ? null : host(d, mirror), t.shardedOptimizer(),
            t.shardingOffReason(), st, t.copyEngineCollectivesUsed(), t.copyEngineOffReason());
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

  /**
   * Note [copy-engine collectives]: the reduce-scatter as an all-to-all on the copy engines whose chunks the compute
   * stream sums (at W = 2 one addition, as NCCL's), the mirror gathered on the copy engines: the unsharded bits.
   */
  @Test
  void copyEngineCollectivesGiveTheUnshardedBits() {
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    List<Run> plain = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, false, false, false, 2);
    List<Run> ce = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, true, false, true, 2);
    for (Run r : ce) {
      assertTrue(r.copyEngine(), "copy-engine collectives were off: " + r.copyEngineOff());
    }
    assertSameRuns(ce, plain, "bf16, SGD momentum, copy engines, two fits");
    List<Run> adamPlain = onTwoGpus(DType.FLOAT32, DType.FLOAT32, OptimizerConfig.adamw(1e-3), false, false, false, 1);
    List<Run> adamCe = onTwoGpus(DType.FLOAT32, DType.FLOAT32, OptimizerConfig.adamw(1e-3), true, true, true, 1);
    assertTrue(adamCe.get(0).copyEngine(), "copy-engine collectives were off: " + adamCe.get(0).copyEngineOff());
    assertSameRuns(adamCe, adamPlain, "fp32, AdamW, copy engines (the fp32 weights gathered), non-finite check");
    CudaTestLog.note(String.format("copy-engine sharded optimizer, bf16, 2 GPUs: epoch 2 loss %.5f (unsharded %.5f)",
        ce.get(0).stats().get(1).loss(), plain.get(0).stats().get(1).loss()));
  }

  /** Without registrable memory the trainer says why and keeps NCCL's kernels (the same bits). */
  @Test
  void withoutRegistrableMemoryTheCopyEnginesStayOff() {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni();
    List<String> why = LocalLauncher.run(2, Cuda.deviceCount(), 120, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60))) {
        Tensor plain = d.allocate(DType.BFLOAT16, 1024);
        return c.registerCopyEngineBuffers(List.of(plain));
      }
    });
    for (String w : why) {
      assertNotNull(w);
      assertTrue(w.contains("registrable"), w);
    }
  }

  /**
   * allToAllAsync in registered windows (copy engines) and outside them (NCCL's kernels) moves the same chunks; in
   * windows (two in-place gathers at two ranks) it leaves the rank's own chunk of recv as it was.
   */
  @Test
  void allToAllMovesEachRanksChunk() {
    CudaTestSupport.assumeGpus(2);
    CudaTestSupport.assumeJni();
    int n = 3 * 1024 * 1024; // elements, 2 chunks
    List<float[][]> got = LocalLauncher.run(2, Cuda.deviceCount(), 120, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60))) {
        d.preferRegistrableMemory(true);
        float[] mine = new float[n];
        for (int i = 0; i < n; i++) {
          mine[i] = Bf16.round(c.rank() * 1000 + (i % 997) * 0.25f);
        }
        float[][] out = new float[2][];
        for (int pass = 0; pass < 2; pass++) {
          boolean registered = pass == 0;
          Tensor send = registered ? d.allocateRegistrable(DType.BFLOAT16, n) : d.allocate(DType.BFLOAT16, n);
          Tensor recv = registered ? d.allocateRegistrable(DType.BFLOAT16, n) : d.allocate(DType.BFLOAT16, n);
          d.upload(mine, 0, send);
          d.fill(recv, -7f);
          if (registered) {
            assertNull(c.registerCopyEngineBuffers(List.of(send, recv)));
          }
          c.allToAllAsync(send.view(n / 2, n / 2), recv.view(n / 2, n / 2)); // views of the windows, same offsets
          c.allToAllAsync(send.view(0, n / 2), recv.view(0, n / 2));
          c.awaitAsync();
          out[pass] = host(d, recv);
          if (registered) {
            c.releaseCopyEngineBuffers();
          }
          d.free(send);
          d.free(recv);
        }
        return out;
      }
    });
    boolean gathers = !"false".equalsIgnoreCase(System.getProperty(NcclCommunicator.GATHER_EXCHANGE_PROPERTY));
    int half = n / 2;
    int q = half / 2;
    for (int r = 0; r < 2; r++) {
      for (int pass = 0; pass < 2; pass++) {
        float[] recv = got.get(r)[pass];
        for (int part = 0; part < 2; part++) { // the two all-to-alls over [0, half) and [half, n)
          for (int from = 0; from < 2; from++) {
            for (int k = 0; k < q; k += 4099) {
              int at = part * half + from * q + k; // chunk `from` of recv: rank from's chunk r of that part
              int src = part * half + r * q + k;
              float want = from != r ? Bf16.round(from * 1000 + (src % 997) * 0.25f)
                  : pass == 0 && gathers ? -7f // the gathers copy nothing within the GPU
                  : recv[at]; // an all-to-all copies it: unspecified
              assertEquals(want, recv[at], "rank " + r + (pass == 0 ? " (copy engines)" : " (kernels)") + " at " + at);
            }
          }
        }
      }
    }
  }

  /**
   * Device.sumSlices on the GPU: the CPU engine's bits, bf16 and fp32, vectorised and not; with one slice read from
   * its own tensor (GradientSlices; the chunk it replaces holds NaN, unread), the same bits.
   */
  @Test
  void sumSlicesMatchesTheCpuEngine() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0); dev.sparktrainer.cpu.CpuDevice cpu = new dev.sparktrainer.cpu.CpuDevice()) {
      for (DType t : new DType[] {DType.BFLOAT16, DType.FLOAT32}) {
        for (int n : new int[] {4096, 4099}) {
          for (int ways : new int[] {2, 3}) {
            float[] src = new float[ways * n];
            java.util.Random rnd = new java.util.Random(n + ways);
            for (int i = 0; i < src.length; i++) {
              src[i] = i % 101 == 0 ? -0f : (float) rnd.nextGaussian() * 100;
              src[i] = t == DType.BFLOAT16 ? Bf16.round(src[i]) : src[i];
            }
            Tensor cs = cpu.allocate(t, ways * n);
            Tensor cd = cpu.allocate(t, n);
            cpu.upload(src, 0, cs);
            cpu.sumSlices(cs, ways, cd);
            float[] want = host(cpu, cd);
            for (int own = -1; own < ways; own++) {
              Tensor gs = d.allocate(t, ways * n);
              Tensor gd = d.allocate(t, n);
              d.upload(src, 0, gs);
              GradientSlices slices = GradientSlices.of(gs, ways);
              Tensor mine = null;
              if (own >= 0) {
                mine = d.allocate(t, n);
                d.copy(gs.view((long) own * n, n), mine);
                d.fill(gs.view((long) own * n, n), Float.NaN);
                slices = new GradientSlices(gs, ways, own, mine);
              }
              d.sumSlices(slices, gd);
              float[] have = host(d, gd);
              for (int k = 0; k < n; k++) {
                assertEquals(Float.floatToRawIntBits(want[k]), Float.floatToRawIntBits(have[k]), t + " n " + n
                    + " ways " + ways + " own " + own + " at " + k);
              }
              for (Tensor x : new Tensor[] {gs, gd, mine}) {
                if (x != null) {
                  d.free(x);
                }
              }
            }
          }
        }
      }
    }
  }

  /** Note [summed gradient slices]: the optimizers read the slices and sum them as Device.sumSlices, bit for bit. */
  @Test
  void optimizersOverSummedSlicesMatchSumThenStep() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      for (DType t : new DType[] {DType.BFLOAT16, DType.FLOAT32}) {
        for (int n : new int[] {4096, 4099}) {
          java.util.Random rnd = new java.util.Random(n);
          float[] p0 = new float[n];
          float[] g0 = new float[2 * n];
          for (int i = 0; i < n; i++) {
            p0[i] = (float) rnd.nextGaussian();
          }
          for (int i = 0; i < 2 * n; i++) {
            g0[i] = t == DType.BFLOAT16 ? Bf16.round((float) rnd.nextGaussian()) : (float) rnd.nextGaussian();
          }
          for (boolean adam : new boolean[] {false, true}) {
            float[][] out = new float[3][];
            for (int way = 0; way < 3; way++) {
              Tensor p = d.allocate(DType.FLOAT32, n);
              Tensor s1 = d.allocate(DType.FLOAT32, n);
              Tensor s2 = d.allocate(DType.FLOAT32, n);
              Tensor slices = d.allocate(t, 2 * n);
              Tensor own = d.allocate(t, n);
              d.upload(p0, 0, p);
              d.upload(g0, 0, slices);
              d.copy(slices.view(n, n), own);
              GradientSlices gs = GradientSlices.of(slices, 2);
              if (way == 2) { // slice 1 read from its own tensor; its chunk of slices is not read
                d.fill(slices.view(n, n), Float.NaN);
                gs = new GradientSlices(slices, 2, 1, own);
              }
              for (int step = 1; step <= 2; step++) {
                if (way != 1) { // summed in the update's pass
                  if (adam) {
                    d.adamwStep(p, gs, s1, s2, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
                  } else {
                    d.sgdStep(p, gs, s1, 0.05f, 0.9f, false, 0.01f, step == 1);
                  }
                } else { // summed first
                  Tensor g = d.allocate(t, n);
                  d.sumSlices(slices, 2, g);
                  if (adam) {
                    d.adamwStep(p, g, s1, s2, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
                  } else {
                    d.sgdStep(p, g, s1, 0.05f, 0.9f, false, 0.01f, step == 1);
                  }
                  d.free(g);
                }
              }
              out[way] = host(d, p);
              for (Tensor x : new Tensor[] {p, s1, s2, slices, own}) {
                d.free(x);
              }
            }
            assertArrayEquals(out[1], out[0], t + (adam ? " AdamW" : " SGD") + " n " + n);
            assertArrayEquals(out[1], out[2], t + (adam ? " AdamW" : " SGD") + " n " + n + ", own slice apart");
          }
        }
      }
    }
  }

  /**
   * A fit that fails (here its epoch listener throws after the first epoch, on both ranks) keeps its copy-engine
   * buffers registered; the next fit on the same trainer uses them again (the ranks agree there is nothing to
   * register) and ends where an uninterrupted fit does.
   */
  @Test
  void aFitAfterAFailedOneUsesTheRegisteredBuffersAgain() {
    OptimizerConfig sgd = OptimizerConfig.sgd(0.05).withMomentum(0.9);
    List<Run> plain = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, false, false, false, 1);
    // the non-finite check on, as a fit by default has it
    List<Run> resumed = onTwoGpus(DType.BFLOAT16, DType.BFLOAT16, sgd, true, true, true, 2, true);
    for (int r = 0; r < 2; r++) {
      Run x = resumed.get(r);
      assertTrue(x.copyEngine(), "rank " + r + ", the second fit: " + x.copyEngineOff());
      assertEquals(1, x.stats().size(), "the second fit ran the second epoch");
      assertArrayEquals(plain.get(r).params(), x.params(), "rank " + r + ": weights after the interrupted fits");
      for (String k : plain.get(r).state().keySet()) {
        assertArrayEquals(plain.get(r).state().get(k), x.state().get(k), "rank " + r + ": " + k);
      }
    }
  }
}
