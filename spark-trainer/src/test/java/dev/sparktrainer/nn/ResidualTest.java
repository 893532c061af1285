package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Tensor;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Residual blocks: y = main(x) + shortcut(x) forward, gradients through both paths against finite
 * differences (GELU instead of ReLU inside, so there are no kinks), identity and projection shortcuts,
 * nesting, names, and the shape check.
 */
class ResidualTest {
  private static final Layer.Context TRAIN = new Layer.Context(true, 1L, 1L);
  private final CpuDevice dev = new CpuDevice();
  private final CnnGradientHarness h = new CnnGradientHarness(dev, 31337L);

  @AfterEach
  void close() {
    dev.close();
  }

  private static Conv2d conv(int filters, int kernel, int stride, int padding) {
    return new Conv2d(filters, new int[] {kernel, kernel}, Conv2dDesc.of(stride, padding), false,
        Conv2d.Init.UNIFORM);
  }

  private static Activation gelu() {
    return new Activation(Activation.Kind.GELU);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3})
  void identityShortcut(int batch) {
    Residual r = new Residual(List.of(conv(3, 3, 1, 1), new BatchNorm2d(0.1f, 1e-5f), gelu(), conv(3, 3, 1, 1)),
        List.of());
    CnnGradientHarness.Case c = h.layerCase(r, batch, new int[] {3, 5, 4}, TRAIN);
    // y = main(x) + x
    float[] y = h.host(c.forward());
    float[] m = h.host(r.main().forward(c.xt, TRAIN));
    for (int k = 0; k < y.length; k++) {
      assertEquals(m[k] + c.x[k], y[k], 1e-6);
    }
    c.check("residual, identity shortcut, batch " + batch);
  }

  @ParameterizedTest(name = "batch {0}")
  @ValueSource(ints = {1, 3})
  void projectionShortcutWithStride(int batch) {
    // a ResNet downsampling block: main conv3x3/2 - bn - gelu - conv3x3 - bn; shortcut conv1x1/2 - bn
    Residual r = new Residual(
        List.of(conv(4, 3, 2, 1), new BatchNorm2d(0.1f, 1e-5f), gelu(), conv(4, 3, 1, 1),
            new BatchNorm2d(0.1f, 1e-5f)),
        List.of(conv(4, 1, 2, 0), new BatchNorm2d(0.1f, 1e-5f)));
    CnnGradientHarness.Case c = h.layerCase(r, batch == 1 ? 2 : batch, new int[] {2, 5, 5}, TRAIN);
    assertArrayEquals(new int[] {4, 3, 3}, r.outputShape(new int[] {2, 5, 5}));
    assertEquals(List.of("layer.main.0.conv2d.weight", "layer.main.1.batchnorm2d.weight",
        "layer.main.1.batchnorm2d.bias", "layer.main.1.batchnorm2d.running_mean",
        "layer.main.1.batchnorm2d.running_var", "layer.main.3.conv2d.weight", "layer.main.4.batchnorm2d.weight",
        "layer.main.4.batchnorm2d.bias", "layer.main.4.batchnorm2d.running_mean",
        "layer.main.4.batchnorm2d.running_var", "layer.shortcut.0.conv2d.weight",
        "layer.shortcut.1.batchnorm2d.weight", "layer.shortcut.1.batchnorm2d.bias",
        "layer.shortcut.1.batchnorm2d.running_mean", "layer.shortcut.1.batchnorm2d.running_var"),
        c.ps.entries().stream().map(ParameterSet.Entry::name).toList());
    c.check("residual, projection shortcut");
  }

  @Test
  void nestedBlocksInASequential() {
    Residual inner = new Residual(List.of(conv(2, 3, 1, 1), gelu()), List.of());
    Sequential net = new Sequential(List.of(conv(2, 1, 1, 0), inner, gelu(),
        new Residual(List.of(gelu(), conv(2, 3, 1, 1)),
            List.of(conv(2, 1, 1, 0))),
        new GlobalAvgPool(), new Flatten(), new Linear(3, true)));
    CnnGradientHarness.Case c = h.layerCase(net, 3, new int[] {1, 4, 4}, TRAIN);
    c.check("nested residual blocks");
  }

  @Test
  void backwardWithoutInputGradient() {
    Residual r = new Residual(List.of(conv(2, 3, 1, 1)), List.of());
    CnnGradientHarness.Case c = h.layerCase(r, 2, new int[] {2, 3, 3}, TRAIN);
    c.forward();
    assertNull(r.backward(c.dy, TRAIN, false));
  }

  /**
   * Note [in-place residual add]: with a last layer that never reads its output back (batch norm, a convolution
   * without a fused ReLU), the block's output is written over it (the gradient checks above cover that path);
   * a last layer that reads its output (GELU's backward reads its input, which here is the previous output,
   * so take max pooling, whose backward reads y) keeps its own.
   */
  @Test
  void theSumIsWrittenOverTheMainPathsOutputOnlyWhenItsBackwardDoesNotReadIt() {
    Residual bn = new Residual(List.of(conv(2, 3, 1, 1), new BatchNorm2d(0.1f, 1e-5f)), List.of());
    CnnGradientHarness.Case c = h.layerCase(bn, 2, new int[] {2, 4, 4}, TRAIN);
    Tensor y = c.forward();
    assertSame(bn.main().forward(c.xt, TRAIN).storage(), y.storage(), "written over the batch norm's output");
    Residual pool = new Residual(List.of(conv(2, 3, 1, 1), new MaxPool2d(Pool2dDesc.of(1, 1, 0))), List.of());
    CnnGradientHarness.Case p = h.layerCase(pool, 2, new int[] {2, 4, 4}, TRAIN);
    Tensor yp = p.forward();
    assertNotSame(pool.main().forward(p.xt, TRAIN).storage(), yp.storage(), "max pooling reads its output back");
    p.check("residual over max pooling (own output buffer)");
  }

  @Test
  void shapesMustMatch() {
    Residual r = new Residual(List.of(conv(4, 3, 2, 1)), List.of());
    assertEquals("residual: the main path gives (4, 3, 3) but the identity shortcut gives (2, 5, 5); the shapes "
        + "must match (add a shortcut, e.g. conv2d 1x1 with the main path's stride and filters)",
        assertThrows(IllegalArgumentException.class, () -> r.outputShape(new int[] {2, 5, 5})).getMessage());
    Residual bad = new Residual(List.of(gelu(), new Linear(3, true)), List.of());
    assertEquals("main path layer 1: linear expects a flat input (features), got (2, 5, 5); put a flatten layer "
        + "before it", assertThrows(IllegalArgumentException.class, () -> bad.outputShape(new int[] {2, 5, 5}))
        .getMessage());
    assertEquals("residual: 'layers' (the main path) is empty; add at least one layer",
        assertThrows(IllegalArgumentException.class, () -> new Residual(List.of(), List.of())).getMessage());
  }
}
