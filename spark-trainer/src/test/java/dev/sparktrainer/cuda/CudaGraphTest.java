package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.GraphCaptureException;
import dev.sparktrainer.engine.StepGraph;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.nn.ModelZoo;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import java.util.function.Consumer;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * CUDA graphs (Note [CUDA graphs] in train.Trainer) on one GPU:
 * <ul>
 *   <li>CudaDevice#captureGraph runs the work once from the graph and replays it; what a capture cannot hold
 *       (an allocation, a host transfer, a host wait, the op profile) fails with GraphCaptureException, nothing
 *       of the work runs, and the device stays usable;
 *   <li>the Fashion-MNIST CNN ({@link ModelZoo#fashionMnistCnn()}, batch 512, as the small-cnn benchmark) trained
 *       with graphs gives bitwise the eager run's weights and epoch figures, in bf16 (channels-last, fused path)
 *       and fp32, with every step after the warm-up from a graph; a model with dropout, and a run with the op
 *       profile on, fall back to eager with the same results.
 * </ul>
 * Both runs of a comparison share one device, so they share its cuDNN and cuBLASLt plans (the same engines even
 * under -Dsparktrainer.cudnn.benchmark=true). The seconds per step of both runs go to the GPU report (no
 * timing assert).
 */
class CudaGraphTest {
  static final int BATCH = 512;
  static final int STEPS = 15; // per epoch; odd, so the two input slots swap between epochs
  static final int EPOCHS = 2;

  @BeforeEach
  void gpu() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni(); // cuDNN and cuBLASLt come from the JNI library
  }

  // ---------------------------------------------------------------- the device

  @Test
  void captureRunsTheWorkOnceAndReplaysIt() {
    float[] xs = new float[1000];
    for (int i = 0; i < xs.length; i++) {
      xs[i] = i * 0.5f;
    }
    try (CudaDevice d = new CudaDevice(0)) {
      Tensor x = d.allocate(DType.FLOAT32, xs.length);
      Tensor y = d.allocate(DType.FLOAT32, xs.length);
      d.upload(xs, 0, x);
      long launches = d.graphLaunches();
      StepGraph g = d.captureGraph(() -> d.axpy(1f, x, y));
      assertNotNull(g, "CudaDevice records graphs");
      assertArrayEquals(xs, host(d, y), "captureGraph ran the work once");
      assertTrue(g.replay());
      assertTrue(g.replay());
      float[] three = new float[xs.length];
      for (int i = 0; i < xs.length; i++) {
        three[i] = 3 * xs[i];
      }
      assertArrayEquals(three, host(d, y), "two replays added x twice more");
      assertEquals(launches + 3, d.graphLaunches());
      g.close();
      g.close(); // idempotent
      assertThrows(IllegalStateException.class, g::replay);
      StepGraph open = d.captureGraph(() -> d.scale(y, 2f));
      d.close(); // destroys the graphs still open
      open.close();
    }
  }

  @Test
  void hostWorkDuringACaptureFailsCleanly() {
    try (CudaDevice d = new CudaDevice(0)) {
      Tensor y = d.allocate(DType.FLOAT32, 256);
      d.fill(y, 1f);
      List<Consumer<CudaDevice>> bad = List.of(
          dev -> dev.allocate(DType.FLOAT32, 16),
          dev -> dev.sum(y),
          CudaDevice::synchronize,
          dev -> dev.upload(new float[256], 0, y),
          dev -> dev.prefetch(new float[256], 0, y),
          dev -> dev.setOpProfiling(true));
      for (int k = 0; k < bad.size(); k++) {
        Consumer<CudaDevice> op = bad.get(k);
        GraphCaptureException e = assertThrows(GraphCaptureException.class, () -> d.captureGraph(() -> {
          d.fill(y, 5f); // captured, then dropped with the failed capture
          op.accept(d);
        }), "case " + k);
        assertTrue(e.getMessage().contains("while capturing a CUDA graph"), "case " + k + ": " + e.getMessage());
        assertFalse(d.isCapturing());
        float[] now = host(d, y);
        for (float v : now) {
          assertEquals(1f, v, 0f, "case " + k + ": nothing of the failed capture ran");
        }
      }
      StepGraph g = d.captureGraph(() -> d.fill(y, 7f)); // the device still captures and computes
      assertEquals(7.0 * 256, d.sum(y), 0.0);
      g.close();
      d.setOpProfiling(true);
      assertThrows(GraphCaptureException.class, () -> d.captureGraph(() -> d.fill(y, 9f)));
      d.setOpProfiling(false);
      assertEquals(7.0 * 256, d.sum(y), 0.0, "refused before running the work");
    }
  }

  // ---------------------------------------------------------------- the trainer

  /** {@code rows} random 1x28x28 rows in [-1, 1) with random labels of 10 classes. */
  static HeapRowStore synthetic(int rows, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] x = new float[rows * 784];
    for (int i = 0; i < x.length; i++) {
      x[i] = (float) (r.nextDouble() * 2 - 1);
    }
    int[] y = new int[rows];
    for (int i = 0; i < rows; i++) {
      y[i] = r.nextInt(10);
    }
    return new HeapRowStore(x, y, 784);
  }

  record Run(float[] params, List<EpochStats> stats, long graphSteps, long graphReplays, String offReason) {}

  /**
   * {@value #EPOCHS} epochs of {@value #STEPS} steps at batch {@value #BATCH} over 4 cycled batches of random
   * rows: SGD momentum 0.9 under a warm-up + cosine schedule (a new learning rate every step) with clipping and
   * the non-finite check, all of which stay outside the graph.
   */
  static Run train(CudaDevice d, ModelSpec spec, DType compute, boolean graphs) {
    TrainerConfig cfg = TrainerConfig.builder().epochs(EPOCHS).batchSize(BATCH).seed(7)
        .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).schedule(LrSchedule.warmupCosine(5, 0, 0.001))
        .clipNorm(5.0).build();
    HeapRowStore store = synthetic(4 * BATCH, 99);
    int[] local = new int[STEPS * BATCH];
    for (int i = 0; i < local.length; i++) {
      local[i] = i % (4 * BATCH);
    }
    Model m = new Model(spec, d, compute);
    Trainer t = new Trainer(m, cfg, new LocalCommunicator()).cudaGraphs(graphs);
    t.initializeWeights();
    List<EpochStats> stats = t.fit(store, local, STEPS);
    return new Run(m.parametersToHost(), stats, t.graphSteps(), t.graphReplays(), t.graphsOffReason());
  }

  static void assertSameRun(Run eager, Run graphs, String what) {
    assertArrayEquals(eager.params(), graphs.params(), what + ": weights differ from the eager run");
    for (int e = 0; e < EPOCHS; e++) {
      assertEquals(eager.stats().get(e).loss(), graphs.stats().get(e).loss(), 0.0, what + ": epoch " + e + " loss");
      assertEquals(eager.stats().get(e).accuracy(), graphs.stats().get(e).accuracy(), 0.0,
          what + ": epoch " + e + " accuracy");
    }
  }

  static double msPerStep(Run r) {
    return r.stats().get(EPOCHS - 1).seconds() * 1e3 / STEPS; // the last epoch: warm, and mostly replays
  }

  @Test
  void fashionMnistCnnWithGraphsIsBitwiseTheEagerRun() {
    for (DType dt : new DType[] {DType.BFLOAT16, DType.FLOAT32}) {
      try (CudaDevice d = new CudaDevice(0)) {
        Run eager = train(d, ModelZoo.fashionMnistCnn(), dt, false);
        long launches = d.graphLaunches();
        Run graphs = train(d, ModelZoo.fashionMnistCnn(), dt, true);
        String what = "Fashion-MNIST CNN " + dt + " batch " + BATCH + " with CUDA graphs";
        assertNull(graphs.offReason(), what + ": graphs went off: " + graphs.offReason());
        long steps = (long) EPOCHS * STEPS;
        assertEquals(steps - 2, graphs.graphSteps(), what + ": every step after the 2 warm-up steps");
        assertEquals(steps - 4, graphs.graphReplays(), what + ": replays after one capture per input slot");
        assertEquals(graphs.graphSteps(), d.graphLaunches() - launches);
        assertSameRun(eager, graphs, what);
        CudaTestLog.note(String.format(Locale.ROOT, "%s (%s): bitwise the eager run; %d of %d steps from graphs;"
            + " last epoch %.3f ms/step eager, %.3f ms/step with graphs (non-finite check and clipping on: a host"
            + " wait per step)", what, Cuda.deviceName(0), graphs.graphSteps(), steps, msPerStep(eager),
            msPerStep(graphs)));
      }
    }
  }

  /**
   * Two GPUs over NCCL: with in-order buckets the graph holds the step and the buckets follow it (Note [CUDA
   * graphs]), bitwise the eager run on both ranks, the ranks alike; with buckets overlapping backward graphs stay
   * off, naming why. Each rank trains on its own rows.
   */
  @Test
  void twoGpusWithInOrderBucketsUseGraphsAndMatchTheEagerRun() {
    CudaTestSupport.assumeGpus(2);
    ModelSpec spec = ModelZoo.fashionMnistCnn();
    java.util.function.BiFunction<Boolean, Trainer.AllReduceMode, List<Run>> fit = (graphs, mode) ->
        dev.sparktrainer.comm.LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
          try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
              NcclCommunicator c = NcclCommunicator.create(ctx, d)) {
            TrainerConfig cfg = TrainerConfig.builder().epochs(EPOCHS).batchSize(BATCH).seed(7)
                .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).schedule(LrSchedule.warmupCosine(5, 0, 0.001))
                .build();
            HeapRowStore store = synthetic(4 * BATCH, 99);
            int[] local = new int[STEPS * BATCH];
            for (int i = 0; i < local.length; i++) {
              local[i] = (i + ctx.rank() * 2 * BATCH) % (4 * BATCH);
            }
            Model m = new Model(spec, d, DType.BFLOAT16);
            Trainer t = new Trainer(m, cfg, c).cudaGraphs(graphs).allReduceMode(mode)
                .gradientBuckets(256L << 10, 1L << 20); // several buckets even for this small model
            t.initializeWeights();
            List<EpochStats> stats = t.fit(store, local, STEPS);
            return new Run(m.parametersToHost(), stats, t.graphSteps(), t.graphReplays(), t.graphsOffReason());
          }
        });
    List<Run> eager = fit.apply(false, Trainer.AllReduceMode.IN_ORDER);
    List<Run> graphs = fit.apply(true, Trainer.AllReduceMode.IN_ORDER);
    long steps = (long) EPOCHS * STEPS;
    for (int r = 0; r < 2; r++) {
      String what = "rank " + r + " of 2, Fashion-MNIST CNN bf16, CUDA graphs with in-order buckets";
      assertNull(graphs.get(r).offReason(), what + ": graphs went off: " + graphs.get(r).offReason());
      assertEquals(steps - 2, graphs.get(r).graphSteps(), what + ": every step after the 2 warm-up steps");
      assertSameRun(eager.get(r), graphs.get(r), what);
    }
    assertArrayEquals(graphs.get(0).params(), graphs.get(1).params(), "the ranks' weights differ");
    CudaTestLog.note(String.format(Locale.ROOT, "2 GPUs (%s), Fashion-MNIST CNN bf16, in-order buckets: graphs"
        + " bitwise the eager run on both ranks; last epoch %.3f ms/step eager, %.3f ms/step with graphs (rank 0)",
        Cuda.deviceName(0), msPerStep(eager.get(0)), msPerStep(graphs.get(0))));
    List<Run> overlapped = fit.apply(true, Trainer.AllReduceMode.OVERLAPPED);
    for (Run r : overlapped) {
      assertEquals(0, r.graphSteps());
      assertNotNull(r.offReason());
      assertTrue(r.offReason().contains("overlapping backward"), r.offReason());
    }
  }

  @Test
  void aModelWithDropoutFallsBackToEager() {
    ModelSpec spec = ModelSpec.builder().input(1, 28, 28)
        .conv2d(32, 3, 1, 1).relu().maxPool2d(2, 2, 0)
        .conv2d(64, 3, 1, 1).relu().maxPool2d(2, 2, 0)
        .flatten().linear(128).relu().dropout(0.25f).linear(10).build();
    try (CudaDevice d = new CudaDevice(0)) {
      Run eager = train(d, spec, DType.BFLOAT16, false);
      long launches = d.graphLaunches();
      Run graphs = train(d, spec, DType.BFLOAT16, true);
      assertEquals(0, graphs.graphSteps());
      assertEquals(launches, d.graphLaunches(), "nothing was captured");
      assertNotNull(graphs.offReason());
      assertTrue(graphs.offReason().contains("dropout"), graphs.offReason());
      assertSameRun(eager, graphs, "CNN with dropout, graphs requested");
    }
  }

  /** The op profile waits after every op: the capture is refused, the run goes on eagerly with the same bits. */
  @Test
  void theOpProfileMakesTheTrainerFallBackToEager() {
    try (CudaDevice d = new CudaDevice(0)) {
      Run eager = train(d, ModelZoo.fashionMnistCnn(), DType.BFLOAT16, false);
      d.setOpProfiling(true);
      Run graphs = train(d, ModelZoo.fashionMnistCnn(), DType.BFLOAT16, true);
      d.setOpProfiling(false);
      assertEquals(0, graphs.graphSteps());
      assertNotNull(graphs.offReason());
      assertTrue(graphs.offReason().contains("op profile"), graphs.offReason());
      assertSameRun(eager, graphs, "op profile on, graphs requested");
    }
  }
}
