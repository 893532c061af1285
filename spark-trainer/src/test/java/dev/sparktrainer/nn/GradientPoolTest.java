package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Note [transient gradient buffers] in GradientPool: a model draws the gradients between its layers from a
 * pool and gives them back; the gradients are the same bits as with one buffer per layer, the pool stops
 * allocating after the first step, holds far fewer buffers than the model has layers, and a leak is reported.
 */
class GradientPoolTest {
  private final CpuDevice dev = new CpuDevice();

  @AfterEach
  void close() {
    dev.close();
  }

  /**
   * Every layer kind with a backward: conv (bias, fused ReLU), batch norm (+ ReLU), residual blocks with an
   * identity and a projection shortcut (a fused ReLU after each), max and average pooling, dropout, flatten,
   * linear layers with a ReLU between them.
   */
  static ModelSpec spec(boolean sync) {
    ModelSpec.Builder main = ModelSpec.builder()
        .conv2d(ModelSpec.Conv.of(6, 3, 1, 1), false).batchNorm2d().relu()
        .conv2d(ModelSpec.Conv.of(6, 3, 1, 1), false).batchNorm2d();
    ModelSpec.Builder down = ModelSpec.builder()
        .conv2d(ModelSpec.Conv.of(8, 3, 2, 1), false).batchNorm2d().gelu()
        .conv2d(ModelSpec.Conv.of(8, 3, 1, 1), false).batchNorm2d();
    List<ModelSpec.LayerSpec> proj = ModelSpec.builder().conv2d(ModelSpec.Conv.of(8, 1, 2, 0), false).batchNorm2d()
        .layerList();
    ModelSpec s = ModelSpec.builder().input(3, 8, 8)
        .conv2d(6, 3, 1, 1).relu()
        .batchNorm2d().relu()
        .residual(main.layerList(), List.of()).relu()
        .residual(down.layerList(), proj).relu()
        .maxPool2d(2, 2, 0).avgPool2d(1, 1, 0)
        .flatten().dropout(0.1f).linear(12).relu().linear(5).build();
    return sync ? s.withSyncBatchNorm() : s;
  }

  private float[] gradients(Model m, int steps) {
    m.initialize(11L);
    int n = 4;
    SplittableRandom r = new SplittableRandom(5);
    float[] g = new float[Math.toIntExact(m.parameters().totalElements())];
    for (int step = 0; step < steps; step++) {
      float[] x = new float[n * 3 * 8 * 8];
      for (int i = 0; i < x.length; i++) {
        x[i] = (float) r.nextGaussian();
      }
      Tensor xt = dev.allocate(DType.FLOAT32, n, 3 * 8 * 8);
      dev.upload(x, 0, xt);
      Layer.Context ctx = new Layer.Context(true, 1L, step);
      Tensor out = m.forward(xt, ctx);
      float[] dy = new float[Math.toIntExact(out.numel())];
      for (int i = 0; i < dy.length; i++) {
        dy[i] = (float) r.nextGaussian();
      }
      Tensor dyt = dev.allocate(DType.FLOAT32, n, 5);
      dev.upload(dy, 0, dyt);
      m.zeroGrad();
      m.backward(dyt, ctx);
    }
    dev.download(m.parameters().grads(), g, 0);
    return g;
  }

  @ParameterizedTest(name = "sync batch norm {0}")
  @ValueSource(booleans = {false, true})
  void pooledGradientsEqualPerLayerBuffersAndThePoolStopsGrowing(boolean sync) {
    Model pooled = new Model(spec(sync), dev);
    Model plain = new Model(spec(sync), dev);
    plain.detachGradientPool();
    float[] a = gradients(pooled, 1);
    int afterOne = pooled.gradientPool().allocated();
    float[] a3 = gradients(pooled, 3);
    assertArrayEquals(gradients(plain, 1), a, "one step");
    assertArrayEquals(gradients(plain, 3), a3, "three steps");
    assertEquals(afterOne, pooled.gradientPool().allocated(), "later steps reuse the first step's buffers");
    assertTrue(afterOne > 0 && afterOne <= 12, "the pool holds a handful of buffers, not one per layer: " + afterOne);
    boolean nonzero = false;
    for (float v : a) {
      nonzero |= v != 0f;
    }
    assertTrue(nonzero, "the gradients are all zero: the comparison would see nothing");
  }

  @Test
  void buffersComeBackByStorageWithReferenceCounts() {
    GradientPool p = new GradientPool(dev);
    Tensor t = p.acquire(DType.FLOAT32, new int[] {2, 3});
    Tensor view = t.reshape(6);
    p.retain(view); // two consumers
    p.release(t);
    Tensor other = p.acquire(DType.FLOAT32, new int[] {3, 2});
    assertNotSame(t.storage(), other.storage(), "a buffer with a reference left is not handed out again");
    p.release(view);
    Tensor again = p.acquire(DType.FLOAT32, new int[] {6});
    assertSame(t.storage(), again.storage(), "a buffer given back is reused for the same dtype and size");
    p.release(dev.allocate(DType.FLOAT32, 6)); // not the pool's: ignored
    p.release(null);
    p.release(other);
    p.release(again);
    p.checkAllReturned();
    assertEquals(2, p.allocated());
  }

  @Test
  void aLeakIsReported() {
    GradientPool p = new GradientPool(dev);
    p.acquire(DType.FLOAT32, new int[] {4});
    IllegalStateException e = assertThrows(IllegalStateException.class, p::checkAllReturned);
    assertTrue(e.getMessage().contains("still in use"), e.getMessage());
  }
}
