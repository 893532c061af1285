package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import org.junit.jupiter.api.Test;

/** Ownership on a real GPU: leaks are reported, close is idempotent, use after close throws. */
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
}
