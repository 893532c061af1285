package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * Note [fused GELU] (in Linear) on the CPU engine, through a device that asks for the fused linear path: with
 * -Dsparktrainer.nn.fuseGelu=true every GELU after a linear runs inside it (one linearForwardGelu and one
 * linearGeluBackward per layer and step, the Activation layer not at all), and training gives the same bits as the
 * Activation layer's own passes (the device's defaults compose the same ops in the same order).
 */
class FusedGeluTest {
  static final ModelSpec MLP = ModelSpec.mlp(24, new int[] {32, 40, 16}, 5, "gelu", 0f);

  /** A fused-path CPU device that counts the GELU calls, layers' and fused ones, into {@code w.calls}. */
  static Device fused(StepMemoryPlanTest.Wrapped w) {
    w.counted.addAll(java.util.Set.of("linearForwardGelu", "linearGeluBackward", "gelu", "geluBackward"));
    return w.fusedLinear();
  }

  static float[] fit(Device d, boolean fuse, List<EpochStats>[] stats) {
    String before = System.getProperty(Model.FUSE_GELU_PROPERTY);
    System.setProperty(Model.FUSE_GELU_PROPERTY, String.valueOf(fuse));
    Model m;
    try {
      m = new Model(MLP, d, DType.BFLOAT16);
    } finally {
      if (before == null) {
        System.clearProperty(Model.FUSE_GELU_PROPERTY);
      } else {
        System.setProperty(Model.FUSE_GELU_PROPERTY, before);
      }
    }
    int rows = 256;
    TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(32).seed(3)
        .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
    Trainer t = new Trainer(m, cfg, new LocalCommunicator());
    t.initializeWeights();
    stats[0] = t.fit(Bf16GradientsTest.separable(rows, 9), Bf16GradientsTest.inOrder(rows), rows / 32);
    return m.parametersToHost();
  }

  @Test
  @SuppressWarnings("unchecked")
  void geluInsideTheLinearTrainsToTheSameBits() {
    try (CpuDevice cpu = new CpuDevice()) {
      StepMemoryPlanTest.Wrapped plain = new StepMemoryPlanTest.Wrapped(cpu);
      StepMemoryPlanTest.Wrapped fusedCalls = new StepMemoryPlanTest.Wrapped(cpu);
      List<EpochStats>[] a = new List[1];
      List<EpochStats>[] b = new List[1];
      float[] p0 = fit(fused(plain), false, a);
      float[] p1 = fit(fused(fusedCalls), true, b);
      // 16 steps, 3 GELUs: the Activation layers' passes, or one fused call per layer and direction
      assertEquals(Map.of("gelu", 3 * 16, "geluBackward", 3 * 16), plain.calls);
      assertEquals(Map.of("linearForwardGelu", 3 * 16, "linearGeluBackward", 3 * 16), fusedCalls.calls);
      assertArrayEquals(p0, p1, "the same ops in the same order: the same parameters");
      assertEquals(a[0].get(1).loss(), b[0].get(1).loss(), 0.0);
      assertTrue(b[0].get(1).loss() < b[0].get(0).loss(), "the GELU MLP should learn: " + b[0]);
    }
  }
}
