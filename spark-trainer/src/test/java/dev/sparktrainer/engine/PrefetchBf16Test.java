package dev.sparktrainer.engine;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.sparktrainer.cpu.CpuDevice;
import org.junit.jupiter.api.Test;

/**
 * Device#prefetchBf16 (Note [bf16 input on the loader threads] in data.BatchLoader) stores what prefetch of the
 * floats the bits were rounded from stores, on the CPU engine (its default implementation); CudaBf16InputTest
 * checks the CUDA engine's and the trainer's path on a GPU.
 */
class PrefetchBf16Test {
  @Test
  void prefetchBf16StoresWhatPrefetchOfTheFloatsStores() {
    try (CpuDevice d = new CpuDevice()) {
      float[] f = {1.00390625f, -3.3e-5f, 7e20f, Float.NaN, 0.1f, -0f, Float.NEGATIVE_INFINITY};
      short[] bits = new short[f.length + 2];
      Bf16.bits(f, 0, bits, 2, f.length);
      Tensor a = d.allocate(DType.BFLOAT16, f.length);
      Tensor b = d.allocate(DType.BFLOAT16, f.length);
      d.prefetch(f, 0, a);
      d.prefetchBf16(bits, 2, b);
      d.awaitPrefetch();
      float[] ha = new float[f.length];
      float[] hb = new float[f.length];
      d.download(a, ha, 0);
      d.download(b, hb, 0);
      for (int i = 0; i < f.length; i++) {
        assertEquals(Float.floatToRawIntBits(ha[i]), Float.floatToRawIntBits(hb[i]), "value " + i);
      }
      assertThrows(IllegalArgumentException.class,
          () -> d.prefetchBf16(bits, 0, d.allocate(DType.FLOAT32, f.length)));
      assertThrows(IndexOutOfBoundsException.class, () -> d.prefetchBf16(bits, 3, b));
    }
  }
}
