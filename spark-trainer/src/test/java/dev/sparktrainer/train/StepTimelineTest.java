package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.engine.StepTimeline;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Note [step timeline]: the trainer's per-phase device time, and that measuring changes nothing. */
@Timeout(120)
class StepTimelineTest {
  record Run(List<Map<String, Double>> timelines, List<EpochStats> stats, float[] params) {}

  static List<Run> train(int world, boolean timeline) {
    HeapRowStore store = DataParallelInvariantsTest.data(96);
    return LocalLauncher.run(world, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(8).seed(3)
          .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
      try (CpuDevice d = new CpuDevice();
          Communicator comm = world == 1 ? new LocalCommunicator() : RingCommunicator.create(ctx, Duration.ofSeconds(30))) {
        Model m = new Model(DataParallelInvariantsTest.SPEC, d);
        Trainer t = new Trainer(m, cfg, comm).stepTimeline(timeline);
        t.initializeWeights();
        int steps = 96 / world / 8;
        int[] local = new int[steps * 8];
        for (int i = 0; i < local.length; i++) {
          local[i] = ctx.rank() * local.length + i;
        }
        List<EpochStats> st = t.fit(store, local, steps);
        return new Run(t.timelines(), st, m.parametersToHost());
      }
    });
  }

  @Test
  void phasesPerEpochInStepOrder() {
    Run r = train(1, true).get(0);
    assertEquals(2, r.timelines().size(), "one per epoch");
    for (int e = 0; e < 2; e++) {
      Map<String, Double> t = r.timelines().get(e);
      assertEquals(List.of("input wait + zero grad", "forward + loss", "backward", "optimizer", "between steps"),
          List.copyOf(t.keySet()));
      double sum = 0;
      for (double ms : t.values()) {
        assertTrue(ms >= 0, t.toString());
        sum += ms;
      }
      EpochStats s = r.stats().get(e);
      long steps = s.samples() / 8;
      assertTrue(sum * steps <= s.seconds() * 1e3, "the marked intervals lie inside the epoch: " + sum * steps
          + " ms vs " + s.seconds() * 1e3);
    }
  }

  @Test
  void twoRanksTimeTheAllReduceAndTrainTheSameWithOrWithout() {
    List<Run> on = train(2, true);
    List<Run> off = train(2, false);
    for (int k = 0; k < 2; k++) {
      assertTrue(on.get(k).timelines().get(1).containsKey("all-reduce"), on.get(k).timelines().toString());
      assertTrue(off.get(k).timelines().isEmpty());
      assertArrayEquals(off.get(k).params(), on.get(k).params(), "rank " + k + ": marking changes nothing");
    }
  }

  @Test
  void byLayerSplitsForwardAndBackwardAndChangesNothing() {
    ModelSpec spec = ModelSpec.builder().input(1, 6, 6).conv2d(4, 3, 1, 1).relu().maxPool2d(2, 2, 0).flatten()
        .linear(3)
        .build();
    java.util.Random r = new java.util.Random(5);
    float[] x = new float[48 * 36];
    int[] y = new int[48];
    for (int i = 0; i < x.length; i++) {
      x[i] = (float) r.nextGaussian();
    }
    for (int i = 0; i < y.length; i++) {
      y[i] = r.nextInt(3);
    }
    HeapRowStore store = new HeapRowStore(x, y, 36);
    float[][] params = new float[2][];
    for (int k = 0; k < 2; k++) {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(8).seed(3)
          .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
      try (CpuDevice d = new CpuDevice()) {
        Model m = new Model(spec, d);
        Trainer t = new Trainer(m, cfg, new LocalCommunicator()).stepTimeline(true).stepTimelineByLayer(k == 1);
        t.initializeWeights();
        int[] local = java.util.stream.IntStream.range(0, 48).toArray();
        t.fit(store, local, 6);
        params[k] = m.parametersToHost();
        List<String> phases = List.copyOf(t.timelines().get(1).keySet());
        if (k == 0) {
          assertEquals(List.of("input wait + zero grad", "forward + loss", "backward", "optimizer", "between steps"),
              phases);
        } else {
          assertEquals(List.of("input wait + zero grad", "forward 0.conv2d", "forward 1.activation", "forward 2.maxpool2d",
              "forward 3.flatten", "forward 4.linear", "forward + loss", "backward 4.linear", "backward 3.flatten",
              "backward 2.maxpool2d", "backward 1.activation", "backward 0.conv2d", "backward", "optimizer",
              "between steps"), phases);
        }
      }
    }
    assertArrayEquals(params[0], params[1], "marking by layer changes nothing");
  }

  @Test
  void hostClockTimelineSumsIntervalsByLabel() {
    StepTimeline t = StepTimeline.hostClock();
    assertTrue(t.drain().isEmpty());
    t.mark("start");
    t.mark("a");
    t.mark("b");
    t.mark("a");
    Map<String, Double> m = t.drain();
    assertEquals(List.of("a", "b"), List.copyOf(m.keySet()), "the first mark only starts the first interval");
    assertTrue(t.drain().isEmpty(), "drain clears");
    t.mark("after drain");
    assertTrue(t.drain().isEmpty(), "the first mark after a drain starts a new interval");
    t.close();
  }
}
