package dev.sparktrainer.engine;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** GradientSlices: what it accepts, which tensor each slice is, and the CPU engine's sums with one slice apart. */
class GradientSlicesTest {

  @Test
  void slicesAreViewsExceptTheOwnOne() {
    try (CpuDevice d = new CpuDevice()) {
      Tensor all = d.allocate(DType.FLOAT32, 12);
      Tensor mine = d.allocate(DType.FLOAT32, 4);
      d.upload(new float[] {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 0, all);
      d.upload(new float[] {-1, -2, -3, -4}, 0, mine);
      GradientSlices g = new GradientSlices(all, 3, 1, mine);
      assertEquals(4, g.sliceSize());
      assertSame(mine, g.slice(1));
      float[] s2 = new float[4];
      d.download(g.slice(2), s2, 0);
      assertEquals(8f, s2[0]);
      assertEquals(11f, s2[3]);
      assertThrows(IndexOutOfBoundsException.class, () -> g.slice(3));
      assertEquals(-1, GradientSlices.of(all, 3).own());
    }
  }

  @Test
  void badShapesSayWhatToGive() {
    try (CpuDevice d = new CpuDevice()) {
      Tensor all = d.allocate(DType.FLOAT32, 12);
      Tensor four = d.allocate(DType.FLOAT32, 4);
      Tensor three = d.allocate(DType.FLOAT32, 3);
      Tensor bf = d.allocate(DType.BFLOAT16, 4);
      String m = assertThrows(IllegalArgumentException.class, () -> GradientSlices.of(all, 5)).getMessage();
      assertTrue(m.contains("does not split into 5 slices"), m);
      m = assertThrows(IllegalArgumentException.class, () -> new GradientSlices(all, 3, 1, null)).getMessage();
      assertTrue(m.contains("give a slice index and its tensor"), m);
      m = assertThrows(IllegalArgumentException.class, () -> new GradientSlices(all, 3, -1, four)).getMessage();
      assertTrue(m.contains("give a slice index and its tensor"), m);
      m = assertThrows(IllegalArgumentException.class, () -> new GradientSlices(all, 3, 3, four)).getMessage();
      assertTrue(m.contains("own slice 3 of 3"), m);
      m = assertThrows(IllegalArgumentException.class, () -> new GradientSlices(all, 3, 0, three)).getMessage();
      assertTrue(m.contains("must hold 4 elements"), m);
      m = assertThrows(IllegalArgumentException.class, () -> new GradientSlices(all, 3, 0, bf)).getMessage();
      assertTrue(m.contains("FLOAT32"), m);
    }
  }

  /**
   * The sum with slice k read from its own tensor (the chunk it replaces holding NaN) is the plain sum, bit for bit,
   * in fp32 and bf16; so is an SGD step over it (Device's default: the sum into a temporary tensor, then the step).
   */
  @Test
  void theOwnSliceReplacesItsChunkBitForBit() {
    try (CpuDevice d = new CpuDevice()) {
      for (DType t : new DType[] {DType.FLOAT32, DType.BFLOAT16}) {
        int n = 37;
        int ways = 3;
        float[] src = new float[ways * n];
        Random rnd = new Random(5);
        for (int i = 0; i < src.length; i++) {
          src[i] = i % 13 == 0 ? -0f : (float) rnd.nextGaussian() * 10;
          src[i] = t == DType.BFLOAT16 ? Bf16.round(src[i]) : src[i];
        }
        Tensor plain = d.allocate(t, ways * n);
        d.upload(src, 0, plain);
        Tensor want = d.allocate(t, n);
        d.sumSlices(plain, ways, want);
        float[] w = new float[n];
        d.download(want, w, 0);
        for (int own = 0; own < ways; own++) {
          Tensor holes = d.allocate(t, ways * n);
          d.upload(src, 0, holes);
          Tensor mine = d.allocate(t, n);
          d.copy(holes.view((long) own * n, n), mine);
          d.fill(holes.view((long) own * n, n), Float.NaN);
          GradientSlices g = new GradientSlices(holes, ways, own, mine);
          Tensor got = d.allocate(t, n);
          d.sumSlices(g, got);
          float[] h = new float[n];
          d.download(got, h, 0);
          for (int k = 0; k < n; k++) {
            assertEquals(Float.floatToRawIntBits(w[k]), Float.floatToRawIntBits(h[k]), t + " own " + own + " at " + k);
          }
          float[][] p = new float[2][];
          for (int way = 0; way < 2; way++) {
            Tensor params = d.allocate(DType.FLOAT32, n);
            Tensor mom = d.allocate(DType.FLOAT32, n);
            d.fill(params, 0.5f);
            if (way == 0) {
              d.sgdStep(params, g, mom, 0.1f, 0.9f, false, 0.01f, true);
            } else {
              d.sgdStep(params, want, mom, 0.1f, 0.9f, false, 0.01f, true);
            }
            p[way] = new float[n];
            d.download(params, p[way], 0);
          }
          assertEquals(java.util.Arrays.toString(p[1]), java.util.Arrays.toString(p[0]), t + " own " + own);
        }
      }
    }
  }
}
