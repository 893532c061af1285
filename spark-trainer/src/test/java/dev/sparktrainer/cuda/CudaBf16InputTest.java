package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelZoo;
import org.junit.jupiter.api.Test;

/**
 * Note [bf16 input] in Model: staging the input in bf16 (opt-in) for a mixed-precision first convolution changes no
 * bit; the trainer's bf16 input is rounded by the loader threads and copied by prefetchBf16 (Note [bf16 input on
 * the loader threads] in data.BatchLoader), which stores what prefetch of the floats stores.
 */
class CudaBf16InputTest {
  @Test
  void bf16InputSlotsTrainToTheSameBitsAsFp32() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      assertEquals(DType.FLOAT32, new Model(ModelZoo.fashionMnistCnn(), d, DType.BFLOAT16).inputDType(), "default");
      CudaGraphTest.Run full = CudaGraphTest.train(d, ModelZoo.fashionMnistCnn(), DType.BFLOAT16, false);
      CudaGraphTest.Run low;
      System.setProperty("sparktrainer.train.bf16Input", "true");
      try {
        assertEquals(DType.BFLOAT16, new Model(ModelZoo.fashionMnistCnn(), d, DType.BFLOAT16).inputDType());
        assertEquals(DType.FLOAT32, new Model(ModelZoo.fashionMnistCnn(), d, DType.FLOAT32).inputDType());
        low = CudaGraphTest.train(d, ModelZoo.fashionMnistCnn(), DType.BFLOAT16, false);
      } finally {
        System.clearProperty("sparktrainer.train.bf16Input");
      }
      CudaGraphTest.assertSameRun(full, low, "Fashion-MNIST CNN bf16, input staged in bf16 vs fp32");
      CudaTestLog.note("bf16 input slots: bitwise the fp32-input run (Fashion-MNIST CNN, bf16, "
          + CudaGraphTest.EPOCHS + " epochs)");
    }
  }

  @Test
  void prefetchBf16StoresWhatPrefetchOfTheFloatsStores() {
    CudaTestSupport.assumeGpu();
    int n = (1 << 22) + 5; // above the parallel staging threshold
    float[] f = CudaOpsTest.rand(n, 4, 300);
    f[7] = Float.NaN;
    f[8] = 1.00390625f;
    short[] bits = new short[n];
    dev.sparktrainer.engine.Bf16.bits(f, 0, bits, 0, n);
    try (CudaDevice d = new CudaDevice(0)) {
      dev.sparktrainer.engine.Tensor a = d.allocate(DType.BFLOAT16, n);
      dev.sparktrainer.engine.Tensor b = d.allocate(DType.BFLOAT16, n);
      d.prefetch(f, 0, a);
      d.prefetchBf16(bits, 0, b);
      d.awaitPrefetch();
      float[] ha = CudaTestSupport.host(d, a);
      float[] hb = CudaTestSupport.host(d, b);
      for (int i = 0; i < n; i++) {
        if (Float.floatToRawIntBits(ha[i]) != Float.floatToRawIntBits(hb[i])) {
          throw new AssertionError("value " + i + ": " + ha[i] + " vs " + hb[i]);
        }
      }
    }
  }
}
