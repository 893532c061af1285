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
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ConcurrentHashMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * DESIGN.md invariants 1-4 on the real CPU data-parallel path (TCP ring between worker threads): equal steps
 * per rank, same seed -> bitwise-same weights, W ranks x batch B == 1 rank x batch W*B, and identical
 * parameters on every rank after every step.
 */
@Timeout(120)
class DataParallelInvariantsTest {
  static final ModelSpec SPEC = ModelSpec.builder().input(10).linear(16).relu().linear(4).build();

  static HeapRowStore data(int n) {
    Random r = new Random(9);
    float[] f = new float[n * 10];
    int[] l = new int[n];
    for (int i = 0; i < n; i++) {
      l[i] = r.nextInt(4);
      for (int j = 0; j < 10; j++) {
        f[i * 10 + j] = (float) r.nextGaussian() + (j == l[i] ? 1.5f : 0f);
      }
    }
    return new HeapRowStore(f, l, 10);
  }

  record RankRun(float[] params, List<Long> stepDigests, long steps) {}

  /** Trains on W ranks with per-rank batch B and returns each rank's final weights and per-step digests. */
  static List<RankRun> train(int world, int batch, int epochs, OptimizerConfig opt, HeapRowStore store) {
    SamplerPlan plan = new SamplerPlan(store.rows(), world, batch, 17, false);
    return LocalLauncher.run(world, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(epochs).batchSize(batch).seed(17).optimizer(opt).build();
      try (CpuDevice d = new CpuDevice();
          Communicator comm = world == 1 ? new dev.sparktrainer.comm.LocalCommunicator()
              : RingCommunicator.create(ctx, Duration.ofSeconds(30))) {
        Model m = new Model(SPEC, d);
        List<Long> digests = new ArrayList<>();
        Trainer t = new Trainer(m, cfg, comm).onStep(step -> digests.add(digest(m.parametersToHost())));
        t.initializeWeights();
        int[] local = plan.rowsOfRank(ctx.rank());
        t.fit(store, local, (int) plan.stepsPerEpoch());
        return new RankRun(m.parametersToHost(), digests, t.optimizerSteps());
      }
    });
  }

  static long digest(float[] p) {
    long h = 1125899906842597L;
    for (float v : p) {
      h = 31 * h + Float.floatToRawIntBits(v);
    }
    return h;
  }

  @Test
  void everyRankHoldsIdenticalParametersAfterEveryStep() {
    List<RankRun> runs = train(3, 8, 2, OptimizerConfig.adamw(0.01), data(200));
    long steps = runs.get(0).steps();
    assertEquals(2 * 9, steps, "200 rows, W*B = 24: 9 steps per epoch (padded), 2 epochs");
    for (RankRun r : runs) {
      assertEquals(steps, r.steps(), "every rank must run the same number of steps");
      assertEquals(runs.get(0).stepDigests(), r.stepDigests(), "parameters differ between ranks at some step");
      assertArrayEquals(runs.get(0).params(), r.params());
    }
  }

  @Test
  void sameSeedGivesBitwiseSameWeights() {
    HeapRowStore store = data(150);
    float[] a = train(2, 8, 2, OptimizerConfig.adamw(0.01), store).get(0).params();
    float[] b = train(2, 8, 2, OptimizerConfig.adamw(0.01), store).get(0).params();
    assertArrayEquals(a, b);
  }

  @Test
  void twoRanksWithBatchBMatchOneRankWithBatch2B() {
    // 320 rows: 20 global batches of 16 -> exactly 20 SGD steps in epoch 0 for both layouts.
    HeapRowStore store = data(320);
    OptimizerConfig sgd = OptimizerConfig.sgd(0.1).withMomentum(0.9);
    float[] w2 = train(2, 8, 1, sgd, store).get(0).params();
    float[] w1 = train(1, 16, 1, sgd, store).get(0).params();
    double max = 0;
    for (int i = 0; i < w1.length; i++) {
      max = Math.max(max, Math.abs(w1[i] - w2[i]));
    }
    assertTrue(max <= 1e-5, "W=2 x B=8 vs W=1 x B=16 differ by " + max);
    // and the comparison is meaningful: training moved the weights
    float[] w0 = train(1, 16, 1, sgd.withLr(1e-9), store).get(0).params();
    double moved = 0;
    for (int i = 0; i < w1.length; i++) {
      moved = Math.max(moved, Math.abs(w1[i] - w0[i]));
    }
    assertTrue(moved > 1e-2, "weights barely moved: " + moved);
  }

  @Test
  void samplerGivesEveryRankTheSameNumberOfRowsAndUsesEveryRowOnce() {
    for (int world : new int[] {1, 2, 3, 4}) {
      for (int n : new int[] {1, 7, 64, 100, 1001}) {
        SamplerPlan plan = new SamplerPlan(n, world, 8, 3, false);
        int[] seen = new int[n];
        ConcurrentHashMap<Integer, Integer> sizes = new ConcurrentHashMap<>();
        for (int r = 0; r < world; r++) {
          int[] rows = plan.rowsOfRank(r);
          sizes.put(r, rows.length);
          for (int row : rows) {
            seen[row]++;
          }
        }
        assertEquals(1, sizes.values().stream().distinct().count(), "unequal ranks for n=" + n + " W=" + world);
        long padded = plan.usedPositions() - n;
        long extra = 0;
        for (int c : seen) {
          assertTrue(c >= 1, "a row was never used (n=" + n + ", W=" + world + ")");
          extra += c - 1;
        }
        assertEquals(padded, extra, "only padding may repeat rows");
      }
    }
  }

  @Test
  void globalBatchHoldsTheSameRowsWhateverW() {
    int n = 500;
    int b = 4;
    SamplerPlan one = new SamplerPlan(n, 1, 4 * b, 21, true);
    int[] ref = one.rowsOfRank(0);
    for (int world : new int[] {2, 4}) {
      SamplerPlan p = new SamplerPlan(n, world, 4 * b / world, 21, true);
      int bw = 4 * b / world;
      for (int t = 0; t < p.stepsPerEpoch(); t++) {
        java.util.Set<Integer> global = new java.util.HashSet<>();
        for (int r = 0; r < world; r++) {
          int[] rows = p.rowsOfRank(r);
          for (int k = 0; k < bw; k++) {
            global.add(rows[t * bw + k]);
          }
        }
        java.util.Set<Integer> expected = new java.util.HashSet<>();
        for (int k = 0; k < 4 * b; k++) {
          expected.add(ref[t * 4 * b + k]);
        }
        assertEquals(expected, global, "global batch " + t + " differs for W=" + world);
      }
    }
  }
}
