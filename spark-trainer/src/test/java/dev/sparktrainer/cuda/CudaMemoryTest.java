package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.GraphCaptureException;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.nn.ModelZoo;
import dev.sparktrainer.optim.Optimizer;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * Ownership on a real GPU: leaks are reported, close is idempotent, use after close throws; Device#free and the step
 * memory plan.
 */
class CudaMemoryTest {
  @Test
  void closeIsIdempotentAndUseAfterCloseThrows() {
    CudaTestSupport.assumeGpu();
    CudaDevice d = new CudaDevice(0);
    Tensor t = d.allocate(DType.FLOAT32, 1000);
    d.fill(t, 1f);
    assertEquals(1000.0, d.sum(t), 0);
    d.close();
    d.close();
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> d.fill(t, 2f));
    assertTrue(e.getMessage().contains("closed"), e.getMessage());
    assertThrows(IllegalStateException.class, () -> d.allocate(DType.FLOAT32, 4));
    assertThrows(IllegalStateException.class, () -> ((CudaTensor) t).address());
  }

  @Test
  void strictScratchArenaReportsLeakAndFreesDeviceMemory() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      long free0 = d.memoryInfo()[0];
      CudaArena scratch = d.arena().newChild("scratch");
      CudaBuffer kept = scratch.allocate(256L << 20, "activations");
      long free1 = d.memoryInfo()[0];
      assertTrue(free0 - free1 >= 256L << 20, "256 MiB should be taken: " + free0 + " -> " + free1);
      IllegalStateException e = assertThrows(IllegalStateException.class, scratch::close);
      assertTrue(e.getMessage().contains("activations"), e.getMessage());
      assertTrue(!kept.isOpen());
      long free2 = d.memoryInfo()[0];
      assertTrue(free2 >= free1 + (256L << 20), "the leaked buffer must be freed: " + free1 + " -> " + free2);
      CudaTestLog.note("leak report seen: " + e.getMessage());
    }
  }

  @Test
  void explicitlyClosedBufferFailsItsViews() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      CudaTensor t = d.allocate(DType.FLOAT32, 64);
      CudaTensor v = t.view(8, 4, 4);
      t.buffer().close();
      IllegalStateException e = assertThrows(IllegalStateException.class, () -> d.fill(v, 1f));
      assertTrue(e.getMessage().contains("used after it was closed"), e.getMessage());
    }
  }

  @Test
  void asyncUploadOnTheCopyStream() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      float[] a = new float[3 << 20];
      for (int i = 0; i < a.length; i++) {
        a[i] = i % 1000;
      }
      Tensor t = d.allocate(DType.FLOAT32, a.length);
      try (CudaEvent done = d.uploadAsync(a, 0, t)) {
        d.computeStream().waitFor(done);
      }
      double expect = 0;
      for (float v : a) {
        expect += v;
      }
      assertEquals(expect, d.sum(t), 0);
    }
  }

  @Test
  void cudnnHandleAndVersions() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni();
    try (CudaDevice d = new CudaDevice(0)) {
      CudnnHandle h = d.cudnn();
      assertTrue(h.version() >= 9000, "cuDNN 9 expected, got " + h.version());
      assertTrue(h == d.cudnn(), "one handle per device");
      CudaTestLog.note(NativeLoader.diagnose().strip());
    }
  }

  @Test
  void badOrdinalSaysHowManyDevicesExist() {
    CudaTestSupport.assumeGpu();
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new CudaDevice(99));
    assertTrue(e.getMessage().contains("does not exist"), e.getMessage());
  }

  /**
   * Device#free: the memory goes back to the driver at once (the arena's count drops); only what allocate returned
   * can be freed, never during a capture; a region of freed memory fails on use.
   */
  @Test
  void freeGivesAnAllocationBackAtOnce() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      long before = d.arena().bytesInUse();
      CudaTensor t = d.allocate(DType.FLOAT32, 16 << 20); // 64 MiB
      d.fill(t, 1f);
      assertEquals(before + (64L << 20), d.arena().bytesInUse());
      CudaTensor r = t.region(1024, 256);
      assertTrue(r.storage() != t.storage() && r.view(0, 16, 16).storage() == r.storage());
      assertThrows(IllegalArgumentException.class, () -> d.free(r));
      assertThrows(IllegalArgumentException.class, () -> d.free(t.view(0, 16 << 20)));
      GraphCaptureException e = assertThrows(GraphCaptureException.class, () -> d.captureGraph(() -> d.free(t)));
      assertTrue(e.getMessage().contains("free("), e.getMessage());
      assertEquals(16.0 * (1 << 20), d.sum(t), 0, "still allocated after the refused capture");
      d.free(t);
      assertEquals(before, d.arena().bytesInUse());
      assertThrows(IllegalStateException.class, () -> d.fill(r, 0f));
      d.free(t); // twice: nothing
    }
  }

  /**
   * Note [step memory plan] in nn.StepMemoryPlan on the GPU's bf16 channels-last path (convolution input casts,
   * NHWC filters, fused batch norm + ReLU, the in-place residual add), which the CPU engine has not: the same
   * weights, bit for bit, as without the plan, and a lower peak.
   */
  @Test
  void stepMemoryPlanKeepsTheBitsAndLowersThePeak() {
    CudaTestSupport.assumeGpu();
    ModelSpec spec = ModelZoo.resnet18(10, 3, 32, 32);
    float[][] params = new float[2][];
    long[] peak = new long[2];
    for (int v = 0; v < 2; v++) {
      try (CudaDevice d = new CudaDevice(0)) {
        Model m = modelWithPlan(spec, d, v == 1);
        m.initialize(5);
        int n = 64;
        SplittableRandom r = new SplittableRandom(6);
        float[] x = new float[n * spec.inputSize()];
        int[] y = new int[n];
        for (int i = 0; i < x.length; i++) {
          x[i] = (float) r.nextGaussian();
        }
        for (int i = 0; i < n; i++) {
          y[i] = i % 10;
        }
        Tensor xt = d.allocate(DType.FLOAT32, n, spec.inputSize());
        Tensor yt = d.allocate(DType.INT32, n);
        d.upload(x, 0, xt);
        d.upload(y, 0, yt);
        Tensor losses = d.allocate(DType.FLOAT32, n);
        Tensor dOut = d.allocate(m.outputGradDType(), n, 10);
        Optimizer opt = OptimizerConfig.sgd(0.05).withMomentum(0.9).create(d, m.parameters());
        Layer.Context ctx = new Layer.Context(true, 1L, 1L);
        for (int s = 0; s < 4; s++) {
          m.zeroGrad();
          Tensor out = m.forward(xt, ctx);
          Loss.CROSS_ENTROPY.compute(d, out, yt, losses, dOut, 1f / n);
          m.backward(dOut, ctx);
          opt.step(0.05);
        }
        params[v] = m.parametersToHost();
        peak[v] = d.arena().peakBytes();
        if (v == 1) {
          Model.PlannedMemory p = m.memoryPlans().get(0);
          CudaTestLog.note("step memory plan, ResNet-18 3x32x32 batch 64 bf16: " + p + "; arena peak "
              + peak[0] + " bytes without the plan, " + peak[1] + " with it");
          assertTrue(p.buffers() > 0 && p.totalSlabBytes() < p.replacedBytes(), p.toString());
        } else {
          assertTrue(m.memoryPlans().isEmpty());
        }
      }
    }
    assertArrayEquals(params[0], params[1], "weights with and without the plan");
    assertTrue(peak[1] < peak[0], "peak without the plan " + peak[0] + ", with it " + peak[1]);
  }

  /** A bf16 model built with -Dsparktrainer.nn.memoryPlan={@code plan} (the property is read when it is built). */
  private static Model modelWithPlan(ModelSpec spec, CudaDevice d, boolean plan) {
    String before = System.getProperty(Model.MEMORY_PLAN_PROPERTY);
    System.setProperty(Model.MEMORY_PLAN_PROPERTY, Boolean.toString(plan));
    try {
      return new Model(spec, d, DType.BFLOAT16);
    } finally {
      if (before == null) {
        System.clearProperty(Model.MEMORY_PLAN_PROPERTY);
      } else {
        System.setProperty(Model.MEMORY_PLAN_PROPERTY, before);
      }
    }
  }
}
