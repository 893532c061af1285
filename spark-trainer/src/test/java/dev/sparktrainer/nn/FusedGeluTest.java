package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;

/**
 * Note [fused GELU] (in Linear) on the CPU engine, through a device that asks for the fused linear path: with
 * -Dsparktrainer.nn.fuseGelu=true every GELU after a linear runs inside it (one linearForwardGelu and one
 * linearGeluBackward per layer and step, the Activation layer not at all), and training gives the same bits as the
 * Activation layer's own passes (the device's defaults compose the same ops in the same order).
 */
class FusedGeluTest {
  static final ModelSpec MLP = ModelSpec.mlp(24, new int[] {32, 40, 16}, 5, "gelu", 0f);

  static Device fused(CpuDevice cpu, Map<String, Integer> calls) {
    return (Device) Proxy.newProxyInstance(Device.class.getClassLoader(), new Class<?>[] {Device.class},
        (proxy, method, args) -> {
          String n = method.getName();
          if (method.getDeclaringClass() == Object.class) {
            return switch (n) {
              case "equals" -> proxy == args[0];
              case "hashCode" -> System.identityHashCode(proxy);
              default -> "Fused[" + cpu + "]";
            };
          }
          if (n.equals("prefersFusedLinear")) {
            return true;
          }
          if (n.equals("linearForwardGelu") || n.equals("linearGeluBackward") || n.equals("gelu")
              || n.equals("geluBackward")) {
            calls.merge(n, 1, Integer::sum);
          }
          try {
            return method.invoke(cpu, args);
          } catch (InvocationTargetException e) {
            throw e.getCause();
          }
        });
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
    SplittableRandom r = new SplittableRandom(9);
    int rows = 256;
    float[] x = new float[rows * 24];
    int[] y = new int[rows];
    for (int i = 0; i < rows; i++) {
      y[i] = r.nextInt(5);
      for (int j = 0; j < 24; j++) {
        x[i * 24 + j] = (float) r.nextGaussian() + (j % 5 == y[i] ? 1f : 0f);
      }
    }
    TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(32).seed(3)
        .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
    Trainer t = new Trainer(m, cfg, new LocalCommunicator());
    t.initializeWeights();
    int[] local = new int[rows];
    for (int i = 0; i < rows; i++) {
      local[i] = i;
    }
    stats[0] = t.fit(new HeapRowStore(x, y, 24), local, rows / 32);
    return m.parametersToHost();
  }

  @Test
  @SuppressWarnings("unchecked")
  void geluInsideTheLinearTrainsToTheSameBits() {
    try (CpuDevice cpu = new CpuDevice()) {
      Map<String, Integer> plain = new TreeMap<>();
      Map<String, Integer> fusedCalls = new TreeMap<>();
      List<EpochStats>[] a = new List[1];
      List<EpochStats>[] b = new List[1];
      float[] p0 = fit(fused(cpu, plain), false, a);
      float[] p1 = fit(fused(cpu, fusedCalls), true, b);
      // 16 steps, 3 GELUs: the Activation layers' passes, or one fused call per layer and direction
      assertEquals(Map.of("gelu", 3 * 16, "geluBackward", 3 * 16), plain);
      assertEquals(Map.of("linearForwardGelu", 3 * 16, "linearGeluBackward", 3 * 16), fusedCalls);
      assertArrayEquals(p0, p1, "the same ops in the same order: the same parameters");
      assertEquals(a[0].get(1).loss(), b[0].get(1).loss(), 0.0);
      assertTrue(b[0].get(1).loss() < b[0].get(0).loss(), "the GELU MLP should learn: " + b[0]);
    }
  }
}
