package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.List;
import org.junit.jupiter.api.Test;

/** A step with NaN/Inf gradients fails the job naming the step, or is skipped and counted. */
class NonFinitePolicyTest {
  static final ModelSpec SPEC = ModelSpec.builder().input(2).linear(3).build();

  /** 8 rows; row 5 holds a NaN (as bad data or an overflow would), which makes that step's gradients NaN (batch 2 -> step 3). */
  static HeapRowStore data() {
    float[] f = new float[16];
    int[] l = new int[8];
    for (int i = 0; i < 8; i++) {
      f[2 * i] = i * 0.1f;
      f[2 * i + 1] = 1f;
      l[i] = i % 3;
    }
    f[10] = Float.NaN;
    return new HeapRowStore(f, l, 2);
  }

  static int[] order() {
    return new int[] {0, 1, 2, 3, 4, 5, 6, 7};
  }

  @Test
  void failNamesTheStep() {
    TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(2).optimizer(OptimizerConfig.sgd(0.1)).build();
    try (CpuDevice d = new CpuDevice()) {
      Trainer t = new Trainer(new Model(SPEC, d), cfg, new LocalCommunicator());
      t.initializeWeights();
      NonFiniteException e = assertThrows(NonFiniteException.class, () -> t.fit(data(), order(), 4));
      assertEquals("rank 0: gradients are NaN or infinite at optimizer step 2 (epoch 1); lower the learning rate, "
          + "clip gradients (clipNorm), check the input for extreme values, or set nonFinite=skip to skip such "
          + "steps", e.getMessage());
    }
  }

  @Test
  void skipLeavesTheWeightsOfThatStepAloneAndCountsIt() {
    TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(2).optimizer(OptimizerConfig.sgd(0.1))
        .nonFinite(TrainerConfig.NonFinitePolicy.SKIP).build();
    try (CpuDevice d = new CpuDevice()) {
      Model m = new Model(SPEC, d);
      Trainer t = new Trainer(m, cfg, new LocalCommunicator());
      t.initializeWeights();
      float[][] before = new float[1][];
      float[][] after = new float[1][];
      t.onStep(step -> {
        if (step == 2) {
          before[0] = m.parametersToHost();
        } else if (step == 3) {
          after[0] = m.parametersToHost();
        }
      });
      List<EpochStats> s = t.fit(data(), order(), 4);
      assertEquals(1, s.get(0).skippedSteps());
      assertArrayEquals(before[0], after[0], "the skipped step must not change the weights");
      for (float v : m.parametersToHost()) {
        assertTrue(Float.isFinite(v));
      }
    }
  }
}
