package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.optim.Optimizer;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * The model zoo: parameter counts equal to torchvision's (sum(p.numel() for p in model.parameters())), the
 * layer structure, and whole models running forward and backward on the CPU; plus a gradient check of a small
 * CNN through Model and the cross-entropy loss.
 */
class CnnModelZooTest {
  private static final Layer.Context TRAIN = new Layer.Context(true, 1L, 1L);
  private static final Layer.Context EVAL = new Layer.Context(false, 1L, 1L);
  private final CpuDevice dev = new CpuDevice();

  @AfterEach
  void close() {
    dev.close();
  }

  /** Counts of each layer class in a list of layers, residual paths included. */
  private static int count(List<Layer> layers, Class<?> type) {
    int n = 0;
    for (Layer l : layers) {
      n += type.isInstance(l) ? 1 : 0;
      if (l instanceof Residual r) {
        n += count(r.main().layers(), type);
        if (r.shortcut() != null) {
          n += count(r.shortcut().layers(), type);
        }
      }
    }
    return n;
  }

  @Test
  void resnet18MatchesTorchvision() {
    ModelSpec spec = ModelZoo.resnet18(1000);
    assertArrayEquals(new int[] {1000}, spec.outputShape());
    ParameterSet ps = new Model(spec, dev).parameters();
    assertEquals(11_689_512, ps.parameterCount(), "torchvision.models.resnet18()");
    assertEquals(2 * 4800, ps.bufferCount(), "running mean + var of 4800 batch-norm channels");
    List<Layer> layers = spec.newLayers();
    assertEquals(20, count(layers, Conv2d.class), "17 convolutions + 3 downsampling shortcuts");
    assertEquals(20, count(layers, BatchNorm2d.class));
    assertEquals(8, count(layers, Residual.class));
    assertEquals(List.of("0.conv2d.weight", "1.batchnorm2d.weight", "1.batchnorm2d.bias",
        "1.batchnorm2d.running_mean", "1.batchnorm2d.running_var", "4.residual.main.0.conv2d.weight"),
        ps.entries().subList(0, 6).stream().map(ParameterSet.Entry::name).toList());
    assertEquals(List.of(64, 3, 7, 7), boxed(ps.entries().get(0).shape()));
    assertEquals("22.linear.bias", ps.entries().get(ps.entries().size() - 1).name());
  }

  @Test
  void resnet50MatchesTorchvision() {
    ModelSpec spec = ModelZoo.resnet50(1000);
    ParameterSet ps = new Model(spec, dev).parameters();
    assertEquals(25_557_032, ps.parameterCount(), "torchvision.models.resnet50()");
    assertEquals(2 * 26560, ps.bufferCount());
    List<Layer> layers = spec.newLayers();
    assertEquals(53, count(layers, Conv2d.class), "1 + 16 x 3 + 4 downsampling shortcuts");
    assertEquals(16, count(layers, Residual.class));
    // v1.5: the stride of the first block of layer2 sits on its 3x3 convolution
    Residual first = (Residual) layers.get(4 + 2 * 3);
    assertEquals(1, ((Conv2d) first.main().layers().get(0)).desc().strideH());
    assertEquals(2, ((Conv2d) first.main().layers().get(3)).desc().strideH());
    assertEquals(2, ((Conv2d) first.shortcut().layers().get(0)).desc().strideH());
    assertEquals(1000, ((Linear) layers.get(layers.size() - 1)).units());
  }

  @Test
  void fashionMnistCnnShape() {
    ModelSpec spec = ModelZoo.fashionMnistCnn();
    assertArrayEquals(new int[] {1, 28, 28}, spec.input());
    assertEquals(10, spec.outputSize());
    assertEquals(421_642, new Model(spec, dev).parameters().parameterCount());
  }

  private static List<Integer> boxed(int[] a) {
    List<Integer> out = new ArrayList<>();
    for (int v : a) {
      out.add(v);
    }
    return out;
  }

  private float[] rand(SplittableRandom r, int n) {
    float[] a = new float[n];
    for (int k = 0; k < n; k++) {
      a[k] = (float) (r.nextDouble() * 2 - 1);
    }
    return a;
  }

  /** A few SGD steps on one fixed batch: the loss must fall (the whole model trains), outputs stay finite. */
  private void overfitsOneBatch(ModelSpec spec, int batch, int steps) {
    Model m = new Model(spec, dev);
    m.initialize(1);
    SplittableRandom r = new SplittableRandom(2);
    Tensor x = dev.allocate(DType.FLOAT32, batch, spec.inputSize());
    dev.upload(rand(r, batch * spec.inputSize()), 0, x);
    Tensor y = dev.allocate(DType.INT32, batch);
    int[] labels = new int[batch];
    for (int k = 0; k < batch; k++) {
      labels[k] = k % spec.outputSize();
    }
    dev.upload(labels, 0, y);
    Tensor losses = dev.allocate(DType.FLOAT32, batch);
    Tensor dout = dev.allocate(DType.FLOAT32, batch, spec.outputSize());
    Optimizer opt = OptimizerConfig.sgd(0.05).withMomentum(0.9).create(dev, m.parameters());
    double first = Double.NaN;
    double last = Double.NaN;
    for (int s = 0; s < steps; s++) {
      m.zeroGrad();
      Tensor out = m.forward(x, TRAIN);
      Loss.CROSS_ENTROPY.compute(dev, out, y, losses, dout, 1f / batch);
      m.backward(dout, TRAIN);
      last = dev.sum(losses) / batch;
      first = s == 0 ? last : first;
      assertTrue(Double.isFinite(last) && Double.isFinite(dev.sumSquares(m.parameters().grads())));
      opt.step(0.05);
    }
    assertTrue(last < 0.7 * first, spec.layers().size() + " layers: loss " + first + " -> " + last);
    float[] eval = new float[batch * spec.outputSize()];
    dev.download(m.forward(x, EVAL), eval, 0);
    for (float v : eval) {
      assertTrue(Float.isFinite(v));
    }
  }

  @Test
  void resnet18TrainsOnSmallImages() {
    overfitsOneBatch(ModelZoo.resnet18(10, 3, 32, 32), 4, 5);
  }

  @Test
  void resnet50TrainsOnSmallImages() {
    overfitsOneBatch(ModelZoo.resnet50(10, 3, 32, 32), 2, 4);
  }

  /** The whole path: conv, batch norm, pooling, residual, linear, through Model and cross-entropy. */
  @Test
  void smallCnnThroughModelAndLossMatchesFiniteDifferences() {
    ModelSpec spec = ModelSpec.builder().input(2, 6, 6)
        .conv2d(3, 3, 1, 1).batchNorm2d().gelu().avgPool2d(2, 2, 0)
        .residual(ModelSpec.builder().conv2d(ModelSpec.Conv.of(3, 3, 1, 1), false).batchNorm2d().layerList(),
            List.of())
        .gelu().globalAvgPool().flatten().linear(4).build();
    Model model = new Model(spec, dev);
    model.initialize(7);
    SplittableRandom r = new SplittableRandom(8);
    int batch = 3;
    Tensor x = dev.allocate(DType.FLOAT32, batch, 72);
    dev.upload(rand(r, batch * 72), 0, x);
    Tensor labels = dev.allocate(DType.INT32, batch);
    dev.upload(new int[] {0, 3, 1}, 0, labels);
    Tensor losses = dev.allocate(DType.FLOAT32, batch);
    Tensor dout = dev.allocate(DType.FLOAT32, batch, 4);
    float scale = 1f / batch;
    float[] params = model.parametersToHost();
    model.zeroGrad();
    Loss.CROSS_ENTROPY.compute(dev, model.forward(x, TRAIN), labels, losses, dout, scale);
    model.backward(dout, TRAIN);
    float[] g = new float[params.length];
    dev.download(model.parameters().grads(), g, 0);
    List<Double> a = new ArrayList<>();
    List<Double> n = new ArrayList<>();
    for (ParameterSet.Entry e : model.parameters().entries()) {
      if (!e.trainable()) {
        continue;
      }
      for (long k = 0; k < e.numel(); k++) {
        int i = Math.toIntExact(e.offset() + k);
        a.add((double) g[i]);
        double[] l = new double[2];
        float orig = params[i];
        float[] steps = {(float) (orig + GradientCheckTest.H), (float) (orig - GradientCheckTest.H)};
        for (int s = 0; s < 2; s++) {
          params[i] = steps[s];
          model.loadParameters(params);
          Loss.CROSS_ENTROPY.compute(dev, model.forward(x, TRAIN), labels, losses, null, scale);
          l[s] = scale * dev.sum(losses);
        }
        params[i] = orig;
        n.add((l[0] - l[1]) / ((double) steps[0] - steps[1]));
      }
    }
    assertEquals(model.parameters().parameterCount(), a.size());
    GradientCheckTest.assertGradientsMatch("small CNN", a.stream().mapToDouble(Double::doubleValue).toArray(),
        n.stream().mapToDouble(Double::doubleValue).toArray(), null);
  }
}
