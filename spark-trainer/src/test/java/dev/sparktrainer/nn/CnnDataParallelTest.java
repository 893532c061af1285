package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A CNN with batch norm trained data-parallel on the CPU ring (W = 2): Note [batch norm across ranks] in
 * BatchNorm2d. The trainable parameters are identical on every rank (gradients are all-reduced, as for any
 * model), while each rank's running statistics are its own (like PyTorch DDP without SyncBatchNorm).
 */
@Timeout(120)
class CnnDataParallelTest {
  static final ModelSpec SPEC = ModelSpec.builder().input(1, 6, 6).conv2d(4, 3, 1, 1).batchNorm2d().relu()
      .maxPool2d(2, 2, 0).residual(ModelSpec.builder().conv2d(ModelSpec.Conv.of(4, 3, 1, 1), false).batchNorm2d()
          .layerList(), List.of()).relu().globalAvgPool().flatten().linear(3).build();

  static HeapRowStore images(int n) {
    Random r = new Random(4);
    float[] f = new float[n * 36];
    int[] l = new int[n];
    for (int i = 0; i < n; i++) {
      l[i] = r.nextInt(3);
      for (int j = 0; j < 36; j++) {
        f[i * 36 + j] = (float) r.nextGaussian() + (j % 3 == l[i] ? 1f : 0f);
      }
    }
    return new HeapRowStore(f, l, 36);
  }

  @Test
  void trainableParametersAgreeAndRunningStatisticsArePerRank() {
    HeapRowStore store = images(96);
    int world = 2;
    int batch = 8;
    SamplerPlan plan = new SamplerPlan(store.rows(), world, batch, 5, false);
    List<float[]> params = LocalLauncher.run(world, 0, 60, ctx -> {
      TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(batch).seed(5)
          .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
      try (CpuDevice d = new CpuDevice();
          Communicator comm = RingCommunicator.create(ctx, Duration.ofSeconds(30))) {
        Model m = new Model(SPEC, d);
        Trainer t = new Trainer(m, cfg, comm);
        t.initializeWeights();
        t.fit(store, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch());
        return m.parametersToHost();
      }
    });
    ParameterSet layout;
    try (CpuDevice d = new CpuDevice()) {
      layout = new Model(SPEC, d).parameters();
    }
    int buffers = 0;
    for (ParameterSet.Entry e : layout.entries()) {
      float[] a = slice(params.get(0), e);
      float[] b = slice(params.get(1), e);
      if (e.trainable()) {
        assertArrayEquals(a, b, e.name() + " must be identical on both ranks");
      } else {
        buffers++;
        assertFalse(Arrays.equals(a, b), e.name() + ": each rank keeps the statistics of its own batches");
      }
    }
    assertEquals(4, buffers);
  }

  private static float[] slice(float[] flat, ParameterSet.Entry e) {
    return Arrays.copyOfRange(flat, (int) e.offset(), (int) (e.offset() + e.numel()));
  }
}
