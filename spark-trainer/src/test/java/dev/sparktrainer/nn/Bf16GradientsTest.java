package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

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
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * Note [bf16 gradients] on the CPU engine, through a device that asks for the fused linear path: the gradient
 * buffer is bf16 only where it applies, one backward gives the fp32 path's gradients rounded to bf16, training
 * follows the fp32-gradient run, and gradient accumulation is refused before any step.
 */
class Bf16GradientsTest {
  static final ModelSpec MLP = ModelSpec.mlp(24, new int[] {32, 16}, 5, "relu", 0f);

  static Device fused(CpuDevice cpu) {
    StepMemoryPlanTest.Wrapped w = new StepMemoryPlanTest.Wrapped(cpu);
    return w.fusedLinear();
  }

  @Test
  void gradientsAreBf16OnlyWhereTheyApply() {
    try (CpuDevice cpu = new CpuDevice()) {
      Device f = fused(cpu);
      assertEquals(DType.BFLOAT16, new Model(MLP, f, DType.BFLOAT16, DType.BFLOAT16).gradientDType());
      assertEquals(DType.BFLOAT16, new Model(MLP, f, DType.BFLOAT16, DType.BFLOAT16).parameters().grads().dtype());
      assertEquals(DType.FLOAT32, new Model(MLP, f, DType.BFLOAT16, DType.FLOAT32).gradientDType(), "not asked");
      assertEquals(DType.FLOAT32, new Model(MLP, f, DType.FLOAT32, DType.BFLOAT16).gradientDType(), "fp32 compute");
      assertEquals(DType.FLOAT32, new Model(MLP, cpu, DType.BFLOAT16, DType.BFLOAT16).gradientDType(),
          "the CPU engine's composed path");
      assertEquals(DType.FLOAT32, new Model(ModelZoo.fashionMnistCnn(), f, DType.BFLOAT16, DType.BFLOAT16)
          .gradientDType(), "convolutions have parameters too");
    }
  }

  @Test
  void oneBackwardGivesTheFp32GradientsRoundedToBf16() {
    try (CpuDevice cpu = new CpuDevice()) {
      Device f = fused(cpu);
      float[][] grads = new float[2][];
      DType[] kinds = {DType.FLOAT32, DType.BFLOAT16};
      SplittableRandom r = new SplittableRandom(7);
      float[] x = new float[16 * 24];
      for (int i = 0; i < x.length; i++) {
        x[i] = (float) r.nextGaussian();
      }
      float[] d = new float[16 * 5];
      for (int i = 0; i < d.length; i++) {
        d[i] = (float) r.nextGaussian() / 16;
      }
      for (int k = 0; k < 2; k++) {
        Model m = new Model(MLP, f, DType.BFLOAT16, kinds[k]);
        m.initialize(11);
        Tensor xt = f.allocate(DType.FLOAT32, 16, 24);
        f.upload(x, 0, xt);
        Tensor dOut = f.allocate(m.outputGradDType(), 16, 5);
        f.upload(d, 0, dOut);
        Layer.Context ctx = new Layer.Context(true, 1, 0);
        m.forward(xt, ctx);
        m.backward(dOut, ctx, true, null);
        grads[k] = new float[Math.toIntExact(m.parameters().totalElements())];
        f.download(m.parameters().grads(), grads[k], 0);
      }
      float[] rounded = grads[0].clone();
      boolean anyInexact = false;
      for (int i = 0; i < rounded.length; i++) {
        rounded[i] = CpuDevice.roundBf16(rounded[i]);
        anyInexact |= rounded[i] != grads[0][i];
      }
      assertTrue(anyInexact, "the fp32 gradients should not all be bf16 values already");
      assertArrayEquals(rounded, grads[1], "bf16 gradients vs fp32 gradients rounded to bf16");
    }
  }

  /** {@code rows} rows of 24 Gaussian features and 5 classes, each class raising its features j with j % 5 == class. */
  static HeapRowStore separable(int rows, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] x = new float[rows * 24];
    int[] y = new int[rows];
    for (int i = 0; i < rows; i++) {
      y[i] = r.nextInt(5);
      for (int j = 0; j < 24; j++) {
        x[i * 24 + j] = (float) r.nextGaussian() + (j % 5 == y[i] ? 1f : 0f);
      }
    }
    return new HeapRowStore(x, y, 24);
  }

  /** 0, 1, ..., rows - 1: every row once, in order. */
  static int[] inOrder(int rows) {
    int[] local = new int[rows];
    for (int i = 0; i < rows; i++) {
      local[i] = i;
    }
    return local;
  }

  static List<EpochStats> fit(Device d, DType grads, int accumulation, float[][] paramsOut) {
    int rows = 512;
    HeapRowStore store = separable(rows, 5);
    TrainerConfig cfg = TrainerConfig.builder().epochs(3).batchSize(32).seed(3).accumulation(accumulation)
        .optimizer(OptimizerConfig.sgd(0.05).withMomentum(0.9)).build();
    Model m = new Model(MLP, d, DType.BFLOAT16, grads);
    Trainer t = new Trainer(m, cfg, new LocalCommunicator());
    t.initializeWeights();
    List<EpochStats> st = t.fit(store, inOrder(rows), rows / 32);
    if (paramsOut != null) {
      paramsOut[0] = m.parametersToHost();
    }
    return st;
  }

  @Test
  void trainsLikeFp32GradientsAndRefusesAccumulation() {
    try (CpuDevice cpu = new CpuDevice()) {
      Device f = fused(cpu);
      float[][] p32 = new float[1][];
      float[][] p16 = new float[1][];
      List<EpochStats> a = fit(f, DType.FLOAT32, 1, p32);
      List<EpochStats> b = fit(f, DType.BFLOAT16, 1, p16);
      assertTrue(a.get(2).loss() < 0.8 * a.get(0).loss(), "the fp32-gradient run should learn: " + a);
      for (int e = 0; e < 3; e++) {
        double la = a.get(e).loss();
        double lb = b.get(e).loss();
        assertTrue(Math.abs(la - lb) <= 0.02 * la, "epoch " + e + ": loss " + lb + " with bf16 gradients vs " + la);
      }
      double diff = 0;
      double norm = 0;
      boolean same = true;
      for (int i = 0; i < p32[0].length; i++) {
        diff += (p32[0][i] - p16[0][i]) * (double) (p32[0][i] - p16[0][i]);
        norm += p32[0][i] * (double) p32[0][i];
        same &= p32[0][i] == p16[0][i];
      }
      assertTrue(!same, "bf16 gradients changed no parameter bit: were they bf16 at all?");
      assertTrue(Math.sqrt(diff / norm) < 0.02, "parameters drifted apart: relative " + Math.sqrt(diff / norm));
      IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
          () -> fit(f, DType.BFLOAT16, 2, null));
      assertTrue(e.getMessage().contains("accumulation 1"), e.getMessage());
    }
  }
}
