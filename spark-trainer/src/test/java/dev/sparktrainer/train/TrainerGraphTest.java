package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.GraphCaptureException;
import dev.sparktrainer.engine.StepGraph;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.OptimizerConfig;
import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.function.Function;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The trainer's side of Note [CUDA graphs], on the CPU engine (CI). {@link Recording} wraps a CPU device and
 * gives it the semantics of a CUDA graph: captureGraph records the ops the step queues without running them,
 * then runs the recording once, and replay runs the same ops with the same arguments again without the
 * layers' host code, as cuGraphLaunch does. Training through it must give bitwise the eager run's weights and
 * epoch figures, which holds only if the captured region holds all of the step's per-step device work and
 * nothing in it changes per step (the learning rate, clipping and the optimizer stay outside). On the plain
 * CPU device, graphs requested change nothing (its captureGraph returns null). The GPU twin is
 * cuda/CudaGraphTest.
 */
@Timeout(120)
class TrainerGraphTest {
  /** Convolution, per-rank batch norm, fused ReLU, pooling, linear layers: most of the CNN op set. */
  static final ModelSpec CNN = ModelSpec.builder().input(1, 8, 8)
      .conv2d(4, 3, 1, 1).batchNorm2d().relu().maxPool2d(2, 2, 0)
      .flatten().linear(16).relu().linear(3).build();
  static final ModelSpec CNN_DROPOUT = ModelSpec.builder().input(1, 8, 8)
      .conv2d(4, 3, 1, 1).relu().maxPool2d(2, 2, 0)
      .flatten().linear(16).relu().dropout(0.25f).linear(3).build();
  static final int BATCH = 8;
  static final int ROWS = 40; // 5 steps per epoch: an odd count, so the input slots swap roles between epochs
  static final int EPOCHS = 3;

  static HeapRowStore data(int n) {
    Random r = new Random(21);
    float[] f = new float[n * 64];
    int[] l = new int[n];
    for (int i = 0; i < n; i++) {
      l[i] = i % 3;
      for (int j = 0; j < 64; j++) {
        f[i * 64 + j] = (float) (r.nextGaussian() + (j % 3 == l[i] ? 1 : 0));
      }
    }
    return new HeapRowStore(f, l, 64);
  }

  /** AdamW under a schedule (the learning rate changes every step) with clipping: both must stay eager. */
  static TrainerConfig config() {
    return TrainerConfig.builder().epochs(EPOCHS).batchSize(BATCH).seed(13)
        .optimizer(OptimizerConfig.adamw(0.01)).schedule(LrSchedule.warmupCosine(3, 0, 0.001)).clipNorm(1.0)
        .build();
  }

  record Run(float[] params, List<EpochStats> stats, long graphSteps, long graphReplays, String offReason) {}

  static Run train(Device d, ModelSpec spec, boolean graphs, Communicator comm, int rank, int world) {
    TrainerConfig cfg = config();
    HeapRowStore store = data(ROWS * world);
    SamplerPlan plan = new SamplerPlan(store.rows(), world, cfg.batchSize(), cfg.seed(), false);
    Model m = new Model(spec, d);
    Trainer t = new Trainer(m, cfg, comm).cudaGraphs(graphs);
    t.initializeWeights();
    List<EpochStats> stats = t.fit(store, plan.rowsOfRank(rank), (int) plan.stepsPerEpoch());
    return new Run(m.parametersToHost(), stats, t.graphSteps(), t.graphReplays(), t.graphsOffReason());
  }

  static Run trainCpu(ModelSpec spec, boolean graphs) {
    try (CpuDevice d = new CpuDevice()) {
      return train(d, spec, graphs, new LocalCommunicator(), 0, 1);
    }
  }

  static Run trainRecording(ModelSpec spec, boolean graphs, Recording rec) {
    try (rec.cpu) {
      return train(rec.device(), spec, graphs, new LocalCommunicator(), 0, 1);
    }
  }

  static void assertSameRun(Run expected, Run actual, String what) {
    assertArrayEquals(expected.params(), actual.params(), what + ": weights differ from the eager run");
    assertEquals(expected.stats().size(), actual.stats().size());
    for (int e = 0; e < expected.stats().size(); e++) {
      assertEquals(expected.stats().get(e).loss(), actual.stats().get(e).loss(), 0.0, what + ": epoch " + e + " loss");
      assertEquals(expected.stats().get(e).accuracy(), actual.stats().get(e).accuracy(), 0.0,
          what + ": epoch " + e + " accuracy");
    }
  }

  @Test
  void graphsRequestedOnTheCpuDeviceChangeNothing() {
    Run eager = trainCpu(CNN, false);
    Run graphs = trainCpu(CNN, true);
    assertSameRun(eager, graphs, "CPU device, graphs requested");
    assertEquals(0, graphs.graphSteps());
    assertNotNull(graphs.offReason());
    assertTrue(graphs.offReason().contains("has no graphs"), graphs.offReason());
    assertNull(eager.offReason(), "graphs not requested: nothing to report");
  }

  @Test
  void replayedStepsGiveTheEagerWeightsBitwise() {
    Run eager = trainCpu(CNN, false);
    Recording rec = new Recording();
    Run graphs = trainRecording(CNN, true, rec);
    assertSameRun(eager, graphs, "recorded and replayed steps");
    long steps = (long) EPOCHS * ROWS / BATCH;
    assertNull(graphs.offReason(), "graphs went off: " + graphs.offReason());
    assertEquals(2, rec.captures, "one graph per input slot");
    assertEquals(steps - Trainer.GRAPH_WARMUP_STEPS, graphs.graphSteps(), "every step after the warm-up");
    assertEquals(steps - Trainer.GRAPH_WARMUP_STEPS - 2, graphs.graphReplays());
    assertEquals(graphs.graphSteps(), rec.launches);
  }

  @Test
  void dropoutKeepsTheEagerPath() {
    Run eager = trainCpu(CNN_DROPOUT, false);
    Recording rec = new Recording();
    Run graphs = trainRecording(CNN_DROPOUT, true, rec);
    assertSameRun(eager, graphs, "model with dropout, graphs requested");
    assertEquals(0, rec.captures);
    assertEquals(0, graphs.graphSteps());
    assertTrue(graphs.offReason().contains("dropout"), graphs.offReason());
  }

  @Test
  void accumulationKeepsTheEagerPath() {
    Recording rec = new Recording();
    try (rec.cpu) {
      Model m = new Model(CNN, rec.device());
      Trainer t = new Trainer(m, TrainerConfig.builder().batchSize(BATCH).accumulation(2).build(),
          new LocalCommunicator()).cudaGraphs(true);
      t.initializeWeights();
      HeapRowStore store = data(ROWS);
      SamplerPlan plan = new SamplerPlan(store.rows(), 1, BATCH, 1, false);
      t.fit(store, plan.rowsOfRank(0), (int) plan.stepsPerEpoch());
      assertEquals(0, t.graphSteps());
      assertTrue(t.graphsOffReason().contains("accumulation"), t.graphsOffReason());
    }
  }

  /**
   * A capture that fails inside backward (a library call refused under capture), with transient gradients
   * lent out: the trainer gives them back, runs the step eagerly and stays eager, with the eager weights.
   */
  @Test
  void aCaptureThatFailsInsideBackwardFallsBackToEager() {
    Run eager = trainCpu(CNN, false);
    Recording rec = new Recording();
    rec.failOn = "reluBackward";
    Run graphs = trainRecording(CNN, true, rec);
    assertSameRun(eager, graphs, "capture failed inside backward");
    assertEquals(0, graphs.graphSteps());
    assertEquals(1, rec.failures, "one capture tried, then eager for the rest of the run");
    assertTrue(graphs.offReason().contains("simulated"), graphs.offReason());
  }

  /** The recording device refuses what a CUDA capture cannot hold, as CudaDevice does. */
  @Test
  void theRecordingDeviceRefusesHostWorkDuringACapture() {
    Recording rec = new Recording();
    try (rec.cpu) {
      Device d = rec.device();
      var x = d.allocate(dev.sparktrainer.engine.DType.FLOAT32, 4);
      GraphCaptureException e = assertThrows(GraphCaptureException.class, () -> d.captureGraph(() -> d.sum(x)));
      assertTrue(e.getMessage().contains("sum"), e.getMessage());
      StepGraph g = d.captureGraph(() -> d.fill(x, 2f));
      d.fill(x, 0f);
      assertTrue(g.replay());
      assertEquals(8.0, d.sum(x), 0.0);
    }
  }

  /** W = 2 over the TCP ring: its one all-reduce follows the captured step, so graphs apply and change nothing. */
  @Test
  void twoRanksOverTheRingReplayTheEagerSteps() {
    Function<Boolean, List<Run>> run = graphs -> LocalLauncher.run(2, 0, 60, ctx -> {
      Recording rec = new Recording();
      try (rec.cpu; Communicator comm = RingCommunicator.create(ctx, Duration.ofSeconds(30))) {
        return train(rec.device(), CNN, graphs, comm, ctx.rank(), 2);
      }
    });
    List<Run> eager = run.apply(false);
    List<Run> graphs = run.apply(true);
    for (int r = 0; r < 2; r++) {
      assertSameRun(eager.get(r), graphs.get(r), "rank " + r + " of 2 (TCP ring)");
      assertNull(graphs.get(r).offReason(), graphs.get(r).offReason());
      assertTrue(graphs.get(r).graphReplays() > 0);
    }
  }

  /**
   * A CPU device with CUDA-graph semantics, through a dynamic proxy over {@link Device}: while capturing, ops
   * (void methods) are recorded instead of run, queries (name, capabilities) are answered, and what a CUDA
   * capture cannot hold (allocation, host transfers and waits, values read back) throws; the recording then
   * runs once, and each replay runs it again on the same tensors with the same arguments.
   */
  static final class Recording implements InvocationHandler {
    static final Set<String> QUERIES = Set.of("name", "prefersFusedLinear", "supportsChannelsLast");
    static final Set<String> REFUSED = Set.of("upload", "download", "synchronize", "prefetch", "awaitPrefetch",
        "markPrefetchOrder", "close", "allocate", "free", "sum", "sumSquares");
    final CpuDevice cpu = new CpuDevice();
    private List<Object[]> recording; // {Method, args} while capturing, else null
    String failOn; // an op that fails while capturing (a library call refused under capture), or null
    int captures;
    int launches;
    int failures;

    Device device() {
      return (Device) Proxy.newProxyInstance(Device.class.getClassLoader(), new Class<?>[] {Device.class}, this);
    }

    @Override
    public Object invoke(Object proxy, Method m, Object[] args) throws Throwable {
      String n = m.getName();
      if (m.getDeclaringClass() == Object.class) {
        return switch (n) {
          case "equals" -> proxy == args[0];
          case "hashCode" -> System.identityHashCode(proxy);
          default -> "Recording[" + cpu + "]";
        };
      }
      if (n.equals("captureGraph")) {
        return capture((Runnable) args[0]);
      }
      if (recording != null && !QUERIES.contains(n)) {
        if (REFUSED.contains(n) || m.getReturnType() != void.class) {
          throw new IllegalStateException(n + " during a capture");
        }
        if (n.equals(failOn)) {
          throw new IllegalStateException("simulated: " + n + " failed under capture");
        }
        recording.add(new Object[] {m, args == null ? null : args.clone()});
        return null;
      }
      return call(m, args);
    }

    private Object call(Method m, Object[] args) throws Throwable {
      try {
        return m.invoke(cpu, args);
      } catch (InvocationTargetException e) {
        throw e.getCause();
      }
    }

    private void launch(List<Object[]> calls) {
      launches++;
      for (Object[] c : calls) {
        try {
          call((Method) c[0], (Object[]) c[1]);
        } catch (RuntimeException | Error e) {
          throw e;
        } catch (Throwable t) {
          throw new IllegalStateException(t);
        }
      }
    }

    private StepGraph capture(Runnable work) {
      recording = new ArrayList<>();
      List<Object[]> calls;
      try {
        work.run();
      } catch (RuntimeException e) {
        failures++;
        throw new GraphCaptureException("recording failed: " + e.getMessage(), e);
      } finally {
        calls = recording;
        recording = null;
      }
      captures++;
      launch(calls);
      return new StepGraph() {
        @Override
        public boolean replay() {
          launch(calls);
          return true;
        }

        @Override
        public void close() {}
      };
    }
  }
}
