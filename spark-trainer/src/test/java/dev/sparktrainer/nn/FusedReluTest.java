package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Note [fused ReLU] in Model: the ReLUs after convolutions, per-rank batch norms and residual blocks are
 * computed by those layers, and a model gives the same bits with and without the fusion (forward output,
 * every gradient, the running statistics), in training and evaluation mode; a synchronised batch norm keeps
 * its ReLU apart. (The GPU's fused kernels are checked against the CPU in CudaConvOpsTest.)
 */
class FusedReluTest {
  private final CpuDevice dev = new CpuDevice();

  @AfterEach
  void close() {
    dev.close();
  }

  /** conv(bias)-relu, bn-relu, a residual block with bn-relu inside and a relu after, pooling, a classifier. */
  static ModelSpec spec(boolean syncBn) {
    ModelSpec.Builder main = ModelSpec.builder()
        .conv2d(ModelSpec.Conv.of(6, 3, 1, 1), false).batchNorm2d().relu()
        .conv2d(ModelSpec.Conv.of(6, 3, 1, 1), false).batchNorm2d();
    ModelSpec s = ModelSpec.builder().input(3, 8, 8)
        .conv2d(6, 3, 1, 1).relu()
        .batchNorm2d().relu()
        .residual(main.layerList(), List.of()).relu()
        .maxPool2d(2, 2, 0).flatten().linear(5).build();
    return syncBn ? s.withSyncBatchNorm() : s;
  }

  private static List<Activation> relus(Layer l, List<Activation> out) {
    if (l instanceof Activation a) {
      out.add(a);
    } else if (l instanceof Sequential s) {
      s.layers().forEach(c -> relus(c, out));
    } else if (l instanceof Residual r) {
      relus(r.main(), out);
      if (r.shortcut() != null) {
        relus(r.shortcut(), out);
      }
    }
    return out;
  }

  private record Run(float[] out, float[] grads, float[] params) {}

  private Run run(Model m, boolean training) {
    m.initialize(7L);
    int n = 4;
    float[] x = new float[n * 3 * 8 * 8];
    SplittableRandom r = new SplittableRandom(3);
    for (int i = 0; i < x.length; i++) {
      x[i] = (float) r.nextGaussian();
    }
    Tensor xt = dev.allocate(DType.FLOAT32, n, 3 * 8 * 8);
    dev.upload(x, 0, xt);
    Layer.Context ctx = new Layer.Context(training, 1L, 1L);
    Tensor out = m.forward(xt, ctx);
    float[] o = new float[Math.toIntExact(out.numel())];
    dev.download(out, o, 0);
    float[] g = new float[Math.toIntExact(m.parameters().totalElements())];
    if (training) {
      float[] dy = new float[o.length];
      for (int i = 0; i < dy.length; i++) {
        dy[i] = (float) r.nextGaussian();
      }
      Tensor dyt = dev.allocate(DType.FLOAT32, n, 5);
      dev.upload(dy, 0, dyt);
      m.zeroGrad();
      m.backward(dyt, ctx);
      dev.download(m.parameters().grads(), g, 0);
    }
    return new Run(o, g, m.parametersToHost());
  }

  @ParameterizedTest(name = "training {0}")
  @ValueSource(booleans = {true, false})
  void fusedAndUnfusedModelsGiveTheSameBits(boolean training) {
    Model fused = new Model(spec(false), dev, DType.FLOAT32, true);
    Model plain = new Model(spec(false), dev, DType.FLOAT32, false);
    Run a = run(fused, training);
    Run b = run(plain, training);
    assertArrayEquals(b.out(), a.out(), "forward output");
    assertArrayEquals(b.grads(), a.grads(), "gradients");
    assertArrayEquals(b.params(), a.params(), "parameters and running statistics");
    boolean anyPositive = false;
    for (float v : a.grads()) {
      anyPositive |= v != 0f;
    }
    assertTrue(!training || anyPositive, "the gradients are all zero: the test would not see a difference");
  }

  @Test
  void everyReluAfterAConvolutionBatchNormOrResidualBlockIsFused() {
    Model fused = new Model(spec(false), dev, DType.FLOAT32, true);
    List<Activation> acts = new ArrayList<>();
    for (Layer l : fusedLayers(fused)) {
      relus(l, acts);
    }
    assertEquals(4, acts.size(), "the spec has four ReLUs");
    for (Activation a : acts) {
      assertTrue(a.absorbed(), a.name() + " should be computed by the layer before it");
    }
    Model plain = new Model(spec(false), dev, DType.FLOAT32, false);
    for (Layer l : fusedLayers(plain)) {
      for (Activation a : relus(l, new ArrayList<>())) {
        assertFalse(a.absorbed(), a.name() + " must run itself when fusion is off");
      }
    }
  }

  @Test
  void synchronisedBatchNormKeepsItsReluApart() {
    Model m = new Model(spec(true), dev, DType.FLOAT32, true);
    List<Activation> acts = new ArrayList<>();
    for (Layer l : fusedLayers(m)) {
      relus(l, acts);
    }
    // conv-relu and residual-relu fuse; the two ReLUs after (synchronised) batch norms do not
    assertEquals(List.of(true, false, false, true), acts.stream().map(Activation::absorbed).toList());
    Run a = run(m, true);
    Run b = run(new Model(spec(true), dev, DType.FLOAT32, false), true);
    assertArrayEquals(b.grads(), a.grads(), "gradients with synchronised batch norm");
  }

  private static List<Layer> fusedLayers(Model m) {
    return m.layers();
  }
}
