package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.FP32_TOL;
import static dev.sparktrainer.cuda.CudaTestSupport.assertCloseNormwise;
import static dev.sparktrainer.cuda.CudaTestSupport.host;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.Optimizer;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Forward and backward of every layer type (linear with and without bias, relu, gelu, dropout, flatten),
 * inside models, on the GPU against the CPU engine: same seed, same weights, same batch; logits, losses,
 * the input gradient path (through the parameter gradients) and three SGD-momentum steps.
 */
class CudaLayersTest {
  static CudaDevice gpu;
  static CpuDevice cpu;

  /** Per test, so that each one is reported as skipped (with the reason) on a machine without a GPU. */
  @BeforeEach
  void open() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni();
    if (gpu == null) {
      gpu = new CudaDevice(0);
      cpu = new CpuDevice();
    }
  }

  @AfterAll
  static void close() {
    if (gpu != null) {
      gpu.close();
    }
  }

  static float[] rand(int n, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] a = new float[n];
    for (int i = 0; i < n; i++) {
      a[i] = (float) r.nextGaussian();
    }
    return a;
  }

  record Out(float[] logits, float[] losses, float[] grads, float[] paramsAfter) {}

  static Out run(Device d, ModelSpec spec, Loss loss, int batch, boolean training, int steps, DType compute) {
    Model m = new Model(spec, d, compute);
    m.initialize(42);
    int in = spec.inputSize();
    int out = spec.outputSize();
    Tensor x = d.allocate(DType.FLOAT32, batch, in);
    d.upload(rand(batch * in, 1), 0, x);
    Tensor y;
    if (loss == Loss.CROSS_ENTROPY) {
      y = d.allocate(DType.INT32, batch);
      int[] labels = new int[batch];
      for (int i = 0; i < batch; i++) {
        labels[i] = (i * 7) % out;
      }
      d.upload(labels, 0, y);
    } else {
      y = d.allocate(DType.FLOAT32, batch, out);
      d.upload(rand(batch * out, 2), 0, y);
    }
    Tensor losses = d.allocate(DType.FLOAT32, batch);
    Tensor dOut = d.allocate(DType.FLOAT32, batch, out);
    // SGD with momentum for the multi-step check: AdamW's first steps are lr * sign(g) for every weight, so a
    // gradient that is ~0 on both devices can take either sign and move by 2 lr (AdamW itself is checked
    // bit-exact in CudaOpsTest).
    Optimizer opt = OptimizerConfig.sgd(0.05).withMomentum(0.9).create(d, m.parameters());
    float[] logits = null;
    float[] l = null;
    float[] g = null;
    for (int s = 0; s < steps; s++) {
      Layer.Context ctx = new Layer.Context(training, 9, s);
      m.zeroGrad();
      Tensor o = m.forward(x, ctx);
      loss.compute(d, o, y, losses, dOut, 1f / batch);
      m.backward(dOut, ctx);
      if (s == 0) {
        logits = host(d, o);
        l = host(d, losses);
        g = host(d, m.parameters().grads());
      }
      opt.step(0.05);
    }
    return new Out(logits, l, g, m.parametersToHost());
  }

  static void compare(String name, ModelSpec spec, Loss loss, int batch, boolean training) {
    Out c = run(cpu, spec, loss, batch, training, 3, DType.FLOAT32);
    Out g = run(gpu, spec, loss, batch, training, 3, DType.FLOAT32);
    assertCloseNormwise(c.logits(), g.logits(), FP32_TOL, name + ": forward output");
    assertCloseNormwise(c.losses(), g.losses(), FP32_TOL, name + ": losses");
    assertCloseNormwise(c.grads(), g.grads(), FP32_TOL, name + ": parameter gradients (backward)");
    assertCloseNormwise(c.paramsAfter(), g.paramsAfter(), FP32_TOL, name + ": parameters after 3 SGD-momentum steps");
  }

  @Test
  void mlpReluDropoutCrossEntropy() {
    ModelSpec spec = ModelSpec.builder().input(784).linear(256).relu().dropout(0.2f).linear(128).relu()
        .linear(10).build();
    compare("mlp relu+dropout (training)", spec, Loss.CROSS_ENTROPY, 128, true);
    compare("mlp relu+dropout (eval)", spec, Loss.CROSS_ENTROPY, 33, false);
  }

  @Test
  void flattenGeluNoBiasMse() {
    ModelSpec spec = ModelSpec.builder().input(3, 7, 5).flatten().linear(65, false).gelu().linear(17).build();
    compare("flatten+gelu+linear(no bias), mse", spec, Loss.MSE, 37, true);
  }

  @Test
  void bf16MixedPrecisionMatchesTheCpuEngineInBf16() {
    ModelSpec spec = ModelSpec.builder().input(784).linear(256).relu().linear(128).gelu().linear(10).build();
    Out c = run(cpu, spec, Loss.CROSS_ENTROPY, 128, true, 3, DType.BFLOAT16);
    Out g = run(gpu, spec, Loss.CROSS_ENTROPY, 128, true, 3, DType.BFLOAT16);
    Out g32 = run(gpu, spec, Loss.CROSS_ENTROPY, 128, true, 3, DType.FLOAT32);
    double tol = CudaTestSupport.BF16_TOL;
    assertCloseNormwise(c.logits(), g.logits(), tol, "bf16 mixed precision mlp: forward output vs CPU bf16");
    assertCloseNormwise(c.grads(), g.grads(), tol, "bf16 mixed precision mlp: gradients vs CPU bf16");
    assertCloseNormwise(c.paramsAfter(), g.paramsAfter(), tol, "bf16 mixed precision mlp: params after 3 steps vs CPU bf16");
    assertCloseNormwise(g32.logits(), g.logits(), 5e-2, "bf16 mixed precision mlp: forward output vs GPU fp32");
    assertCloseNormwise(g32.grads(), g.grads(), 5e-2, "bf16 mixed precision mlp: gradients vs GPU fp32");
  }

  @Test
  void oddShapesSingleRow() {
    ModelSpec spec = ModelSpec.builder().input(1).linear(3).gelu().dropout(0.5f).linear(1).build();
    compare("1 -> 3 -> 1, batch 1", spec, Loss.MSE, 1, true);
  }
}
