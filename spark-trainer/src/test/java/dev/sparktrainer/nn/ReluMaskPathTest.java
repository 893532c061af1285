package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;
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
 * The layers' side of Note [ReLU mask epilogues] (in cuda.CudaDevice) on the CPU engine: a device that prefers the
 * fused linear path and offers the mask ops, composed here from the CPU's own ops the way the GPU's cuBLASLt
 * epilogues compute them (the mask's bits are y > 0, rows padded to 128 bits; dx = (dz W) * mask, the bias gradient
 * its column sums). The model must use them between every pair of fused linears with a ReLU between them, only
 * when the gradients are overwritten, and train to the same bits as without them (the same ops in the same order).
 */
class ReluMaskPathTest {
  static final ModelSpec MLP = ModelSpec.mlp(24, new int[] {32, 40, 16}, 5, "relu", 0f);

  /** A fused-path CPU device; with {@code masks}, it also offers the mask ops and counts their calls. */
  static Device device(CpuDevice cpu, boolean masks, Map<String, Integer> calls) {
    return (Device) Proxy.newProxyInstance(Device.class.getClassLoader(), new Class<?>[] {Device.class},
        (proxy, method, args) -> {
          String n = method.getName();
          if (method.getDeclaringClass() == Object.class) {
            return switch (n) {
              case "equals" -> proxy == args[0];
              case "hashCode" -> System.identityHashCode(proxy);
              default -> "Masks[" + cpu + "]";
            };
          }
          if (n.equals("prefersFusedLinear")) {
            return true;
          }
          if (masks && n.equals("reluMaskBytes")) {
            return ((int) args[1] + 127L) / 128 * 128 * (int) args[0] / 8;
          }
          if (masks && n.equals("linearForwardReluMask")) {
            calls.merge(n, 1, Integer::sum);
            Tensor y = (Tensor) args[3];
            cpu.linearForward((Tensor) args[0], (Tensor) args[1], (Tensor) args[2], true, y);
            writeMask(cpu, y, (Tensor) args[4]);
            return true;
          }
          if (masks && n.equals("linearBackwardInputRelu")) {
            calls.merge(n, 1, Integer::sum);
            Tensor dx = (Tensor) args[2];
            cpu.matmul((Tensor) args[0], false, (Tensor) args[1], false, dx, 1f, 0f);
            cpu.linearActBackward(dx, readMask(cpu, (Tensor) args[3], dx.dim(0), dx.dim(1)), dx, (Tensor) args[4],
                false);
            return true;
          }
          try {
            return method.invoke(cpu, args);
          } catch (InvocationTargetException e) {
            throw e.getCause();
          }
        });
  }

  static void writeMask(CpuDevice cpu, Tensor y, Tensor mask) {
    int rows = y.dim(0);
    int cols = y.dim(1);
    int ld = (cols + 127) / 128 * 128;
    float[] v = new float[rows * cols];
    cpu.download(y, v, 0);
    int[] bits = new int[Math.toIntExact(mask.numel())];
    for (int r = 0; r < rows; r++) {
      for (int c = 0; c < cols; c++) {
        if (v[r * cols + c] > 0) {
          long b = (long) r * ld + c;
          bits[(int) (b >>> 5)] |= 1 << (b & 31);
        }
      }
    }
    cpu.upload(bits, 0, mask);
  }

  /** The mask as a (rows, cols) tensor of 1 and 0, the ReLU output's sign pattern. */
  static Tensor readMask(CpuDevice cpu, Tensor mask, int rows, int cols) {
    int ld = (cols + 127) / 128 * 128;
    int[] bits = new int[Math.toIntExact(mask.numel())];
    cpu.download(mask, bits, 0);
    float[] h = new float[rows * cols];
    for (int r = 0; r < rows; r++) {
      for (int c = 0; c < cols; c++) {
        long b = (long) r * ld + c;
        h[r * cols + c] = (bits[(int) (b >>> 5)] >>> (b & 31) & 1) != 0 ? 1f : 0f;
      }
    }
    Tensor t = cpu.allocate(DType.FLOAT32, rows, cols);
    cpu.upload(h, 0, t);
    return t;
  }

  static float[] fit(Device d, int accumulation, List<EpochStats>[] stats) {
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
    TrainerConfig cfg = TrainerConfig.builder().epochs(2).batchSize(32).seed(3).accumulation(accumulation)
        .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
    Model m = new Model(MLP, d, DType.BFLOAT16);
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
  void masksBetweenFusedLinearsTrainToTheSameBits() {
    try (CpuDevice cpu = new CpuDevice()) {
      Map<String, Integer> calls = new TreeMap<>();
      List<EpochStats>[] a = new List[1];
      List<EpochStats>[] b = new List[1];
      float[] plain = fit(device(cpu, false, calls), 1, a);
      float[] masked = fit(device(cpu, true, calls), 1, b);
      // 16 steps; 4 linears, 3 with a ReLU after them, so 3 masks in each forward and 3 masked input gradients in
      // each backward (the first linear computes no input gradient, the last has no ReLU)
      assertEquals(Map.of("linearBackwardInputRelu", 3 * 16, "linearForwardReluMask", 3 * 16), calls);
      assertArrayEquals(plain, masked, "the same ops in the same order: the same parameters");
      assertEquals(a[0].get(1).loss(), b[0].get(1).loss(), 0.0);
      // With accumulation over 2 micro-batches the second one's bias gradients must be added: only the first, which
      // overwrites the gradients, applies the masks.
      calls.clear();
      float[] plainAcc = fit(device(cpu, false, calls), 2, a);
      float[] maskedAcc = fit(device(cpu, true, calls), 2, b);
      assertEquals(Map.of("linearBackwardInputRelu", 3 * 8, "linearForwardReluMask", 3 * 16), calls);
      assertArrayEquals(plainAcc, maskedAcc, "accumulation: the same parameters");
    }
  }
}
