package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import org.junit.jupiter.api.Test;

/** Note [gradient buckets]: the slices of the flat gradient buffer that are all-reduced one by one. */
class GradientBucketsTest {
  private static final long MIB = 1L << 20;

  private static long[] starts(long total, long firstBytes, long bytes) {
    return starts(total, firstBytes, bytes, 4);
  }

  private static long[] starts(long total, long firstBytes, long bytes, int elementBytes) {
    TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(2).optimizer(OptimizerConfig.sgd(0.1)).build();
    try (CpuDevice d = new CpuDevice()) {
      Trainer t = new Trainer(new Model(ModelSpec.builder().input(2).linear(3).build(), d), cfg,
          new LocalCommunicator()).gradientBuckets(firstBytes, bytes);
      return elementBytes == 4 ? t.bucketStarts(total) : t.bucketStarts(total, elementBytes);
    }
  }

  @Test
  void bf16BucketsHoldTwiceTheElements() { // Note [bf16 gradients] in nn.Model: bucket sizes stay in bytes
    long total = 218_465_280; // the GPU benchmark's MLP, aligned
    long[] s = starts(total, MIB, 25 * MIB, 2);
    long mib = MIB / 2; // bf16 elements in a MiB
    assertEquals(total - mib, s[1], "first bucket: 1 MiB of bf16");
    assertEquals(25 * mib, s[1] - s[2], "then 25 MiB of bf16");
    assertEquals(mib, s[s.length - 2], "the last bucket: the first MiB");
    assertEquals(0, s[s.length - 1]);
    for (int i = 1; i < s.length - 3; i++) { // all but the first, the remainder before the last and the last
      assertEquals(25 * mib, s[i] - s[i + 1], "bucket " + i + ": 25 MiB of bf16");
    }
    assertEquals(20, s.length, "19 buckets, where fp32 gradients make 36");
    assertEquals(37, starts(total, MIB, 25 * MIB).length);
  }

  /**
   * The sharded optimizer's buckets end at layer starts (Trainer#bucketStarts with Model#gradientReadyOffsets): the
   * benchmark MLP's first layer (8.4M of bf16) is no longer in a bucket with 5.2M of the second layer.
   */
  @Test
  void shardedBucketsEndAtLayerStarts() {
    TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(2).optimizer(OptimizerConfig.sgd(0.1)).build();
    long l1 = 8192L * 1024 + 8192;
    long l2 = 8192L * 8192 + 8192;
    long l5 = 1000L * 8192 + 1000;
    long[] layers = {0, l1, l1 + l2, l1 + 2 * l2, l1 + 3 * l2};
    long total = l1 + 3 * l2 + l5 + 24; // aligned
    long mib = MIB / 2;
    try (CpuDevice d = new CpuDevice()) {
      Trainer t = new Trainer(new Model(ModelSpec.builder().input(2).linear(3).build(), d), cfg,
          new LocalCommunicator()).gradientBuckets(MIB, 25 * MIB);
      long[] plain = t.bucketStarts(total, 2);
      long[] s = t.bucketStarts(total, 2, layers);
      assertEquals(plain[1], s[1], "the first bucket as before");
      assertTrue(java.util.Arrays.stream(plain).noneMatch(x -> x == l1), "without layers no bucket starts at " + l1);
      assertTrue(java.util.Arrays.stream(s).anyMatch(x -> x == l1), "a bucket starts at the second layer");
      assertEquals(mib, s[s.length - 2], "the last bucket: the first MiB");
      assertEquals(l1, s[s.length - 3], "before it: the rest of the first layer");
      for (int i = 1; i < s.length; i++) {
        assertTrue(s[i] < s[i - 1] && s[i - 1] - s[i] <= 25 * mib + 25 * mib / 8, "bucket " + i);
        for (long o : layers) {
          assertFalse(o > s[i] && o < s[i - 1] && s[i - 1] - o >= 25 * mib / 8,
              "bucket " + i + " [" + s[i] + ", " + s[i - 1] + ") spans the layer start " + o);
        }
      }
      assertArrayEquals(plain, t.bucketStarts(total, 2, new long[0]));
    }
  }

  @Test
  void resnet50SizedBufferEndsWithASmallBucket() {
    long total = (25_557_032 + 63) / 64 * 64; // ResNet-50's parameters (a flat buffer of aligned entries)
    long[] s = starts(total, MIB, 25 * MIB);
    long mib = MIB / 4; // fp32 elements in a MiB
    assertEquals(total, s[0]);
    assertEquals(total - mib, s[1], "first bucket: 1 MiB");
    for (int i = 2; i <= 4; i++) {
      assertEquals(25 * mib, s[i - 1] - s[i], "bucket " + (i - 1) + ": 25 MiB");
    }
    assertEquals(mib, s[5], "the bucket before the last stops at 1 MiB");
    assertEquals(0, s[6], "the last bucket: the first MiB of parameters");
    assertEquals(7, s.length);
  }

  @Test
  void bucketsCoverTheBufferInAlignedDescendingSlices() { // totals as flat buffers have them: multiples of ALIGN, or one bucket
    for (long total : new long[] {64, 1000, 262_144, 262_208, 6_815_744, 6_900_032, 100_000_000}) {
      long[] s = starts(total, MIB, 25 * MIB);
      assertEquals(total, s[0]);
      assertEquals(0, s[s.length - 1]);
      for (int i = 1; i < s.length; i++) {
        assertTrue(s[i] < s[i - 1], "non-empty bucket " + i + " of " + total);
        if (s[i] > 0) {
          assertEquals(0, s[i] % ParameterSet.ALIGN, "aligned start " + s[i]);
        }
        assertTrue(s[i - 1] - s[i] <= 25 * MIB / 4, "bucket size");
      }
      if (total > MIB / 4) {
        assertEquals(MIB / 4, s[s.length - 2], "last bucket of " + total + " is the first MiB");
      }
    }
  }

  @Test
  void autoOverlapsOnlyLargeGradientsOrAcrossHosts() { // Note [in-order gradient all-reduce]
    long resnet50 = 4L * 25_557_032;
    long mlp = 4L * 218_465_256; // the GPU benchmark's 1024-8192x4-1000 MLP
    Trainer.AllReduceMode auto = Trainer.AllReduceMode.AUTO;
    assertFalse(Trainer.overlapsAllReduce(auto, resnet50, true));
    assertTrue(Trainer.overlapsAllReduce(auto, resnet50, false), "ranks on several hosts keep the overlap");
    assertFalse(Trainer.overlapsAllReduce(auto, Trainer.OVERLAP_MIN_BYTES, true));
    assertTrue(Trainer.overlapsAllReduce(auto, Trainer.OVERLAP_MIN_BYTES + 4, true));
    assertTrue(Trainer.overlapsAllReduce(auto, mlp, true));
    assertTrue(Trainer.overlapsAllReduce(Trainer.AllReduceMode.OVERLAPPED, 4, true));
    assertFalse(Trainer.overlapsAllReduce(Trainer.AllReduceMode.IN_ORDER, mlp, false));
  }

  @Test
  void smallBufferIsOneBucket() {
    assertArrayEquals(new long[] {1000, 0}, starts(1000, MIB, 25 * MIB));
    assertArrayEquals(new long[] {200_000, 0}, starts(200_000, MIB, 25 * MIB));
  }
}
