package dev.sparktrainer.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/** BatchLoader: segments (the trainer's epochs) one after the other, failures, and bad input. */
class BatchLoaderTest {
  /** Row r has features {r, 10r} and label r. */
  private static HeapRowStore store(int rows) {
    float[] x = new float[rows * 2];
    int[] y = new int[rows];
    for (int r = 0; r < rows; r++) {
      x[2 * r] = r;
      x[2 * r + 1] = 10 * r;
      y[r] = r;
    }
    return new HeapRowStore(x, y, 2);
  }

  @Test
  void segmentsFollowEachOtherInOrder() {
    int[][] orders = {{5, 4, 3, 2, 1, 0}, {0, 2, 4, 1, 3, 5}, {1, 0, 3, 2, 5, 4}};
    int[] steps = {3, 2, 3}; // the second segment leaves its last rows out (a resumed epoch does the opposite)
    List<Integer> asked = new ArrayList<>();
    List<int[]> labels = new ArrayList<>();
    try (BatchLoader l = new BatchLoader(store(6), 2, 1, 3, i -> {
      asked.add(i);
      return new BatchLoader.Segment(orders[i], steps[i]);
    })) {
      HostBatch b;
      while ((b = l.next()) != null) {
        assertEquals(2, b.size());
        assertEquals(b.labels[0], (int) b.features[0]);
        assertEquals(10f * b.labels[1], b.features[3]);
        labels.add(b.labels.clone());
      }
      assertNull(l.next(), "stays at the end");
    }
    assertEquals(List.of(0, 1, 2), asked);
    int[][] want = {{5, 4}, {3, 2}, {1, 0}, {0, 2}, {4, 1}, {1, 0}, {3, 2}, {5, 4}};
    assertEquals(want.length, labels.size());
    for (int k = 0; k < want.length; k++) {
      assertArrayEquals(want[k], labels.get(k), "batch " + k);
    }
  }

  @Test
  void buffersAreRecycledAcrossSegments() {
    // depth 1: two buffers in all, whatever the number of segments
    java.util.Set<float[]> seen = java.util.Collections.newSetFromMap(new java.util.IdentityHashMap<>());
    try (BatchLoader l = new BatchLoader(store(4), 2, 1, 5, i -> new BatchLoader.Segment(new int[] {0, 1, 2, 3}, 2))) {
      HostBatch b;
      int n = 0;
      while ((b = l.next()) != null) {
        seen.add(b.features);
        n++;
      }
      assertEquals(10, n);
    }
    assertTrue(seen.size() <= 2, "buffers: " + seen.size());
  }

  /** Note [loader threads]: 1, 2 or 3 producers give the same batches in the same order, each segment made once. */
  @Test
  void severalProducersGiveTheSameSequence() {
    int rows = 40;
    java.util.function.IntFunction<int[]> order = i -> {
      java.util.SplittableRandom r = new java.util.SplittableRandom(i);
      int[] o = new int[rows];
      for (int k = 0; k < rows; k++) {
        o[k] = r.nextInt(rows);
      }
      return o;
    };
    int[] steps = {7, 0, 10, 3, 5}; // an empty segment and uneven lengths: batch k's producer changes mid-segment
    List<int[]> reference = null;
    for (int threads = 1; threads <= 3; threads++) {
      List<Integer> asked = java.util.Collections.synchronizedList(new ArrayList<>());
      List<int[]> got = new ArrayList<>();
      java.util.Set<float[]> buffers = java.util.Collections.newSetFromMap(new java.util.IdentityHashMap<>());
      try (BatchLoader l = new BatchLoader(store(rows), 4, 2, steps.length, i -> {
        asked.add(i);
        return new BatchLoader.Segment(order.apply(i), steps[i]);
      }, threads)) {
        HostBatch b;
        while ((b = l.next()) != null) {
          assertEquals(b.labels[3], (int) b.features[6]);
          got.add(b.labels.clone());
          buffers.add(b.features);
        }
      }
      assertEquals(25, got.size(), threads + " threads");
      java.util.Collections.sort(asked);
      assertEquals(List.of(0, 1, 2, 3, 4), asked, threads + " threads: each segment made once");
      assertTrue(buffers.size() <= threads * ((2 + threads - 1) / threads + 1), threads + " threads: "
          + buffers.size() + " buffers");
      if (reference == null) {
        reference = got;
        int k = 0;
        for (int i = 0; i < steps.length; i++) {
          for (int t = 0; t < steps[i]; t++, k++) {
            assertArrayEquals(java.util.Arrays.copyOfRange(order.apply(i), 4 * t, 4 * t + 4), got.get(k));
          }
        }
      } else {
        for (int k = 0; k < got.size(); k++) {
          assertArrayEquals(reference.get(k), got.get(k), threads + " threads, batch " + k);
        }
      }
    }
  }

  @Test
  void aProducerErrorReachesNextWithSeveralThreads() {
    try (BatchLoader l = new BatchLoader(store(4), 2, 2, 2, i -> new BatchLoader.Segment(new int[] {0, 1, 2},
        i == 0 ? 1 : 2), 2)) {
      assertEquals(2, l.next().size());
      IllegalStateException e = assertThrows(IllegalStateException.class, l::next);
      assertTrue(e.getMessage().contains("2 steps of 2 need 4 rows, the order has 3"), e.getMessage());
    }
    assertThrows(IllegalArgumentException.class,
        () -> new BatchLoader(store(4), 2, 2, 1, i -> new BatchLoader.Segment(new int[4], 2), 0));
  }

  /** Note [bf16 input on the loader threads]: the producers round the features to bf16 beside the floats. */
  @Test
  void bf16FeaturesAreTheRoundedFeatures() {
    int rows = 8;
    float[] x = new float[rows * 3];
    int[] y = new int[rows];
    java.util.SplittableRandom r = new java.util.SplittableRandom(3);
    for (int i = 0; i < x.length; i++) {
      x[i] = (float) (r.nextDouble() * 200 - 100);
    }
    HeapRowStore store = new HeapRowStore(x, y, 3);
    int[] order = {7, 6, 5, 4, 3, 2, 1, 0};
    for (boolean bf16 : new boolean[] {true, false}) {
      try (BatchLoader l = new BatchLoader(store, 2, 2, 2, i -> new BatchLoader.Segment(order, 4), 2, bf16)) {
        HostBatch b;
        int n = 0;
        while ((b = l.next()) != null) {
          n++;
          if (!bf16) {
            assertNull(b.featuresBf16);
            continue;
          }
          for (int i = 0; i < b.features.length; i++) {
            assertEquals(dev.sparktrainer.engine.Bf16.bits(b.features[i]), b.featuresBf16[i], "value " + i);
          }
        }
        assertEquals(8, n);
      }
    }
  }

  @Test
  void aSegmentTooShortFailsOnNext() {
    AtomicInteger calls = new AtomicInteger();
    try (BatchLoader l = new BatchLoader(store(4), 2, 1, 2, i -> {
      calls.incrementAndGet();
      return new BatchLoader.Segment(new int[] {0, 1, 2}, i == 0 ? 1 : 2); // segment 1 needs 4 rows
    })) {
      assertEquals(2, l.next().size());
      IllegalStateException e = assertThrows(IllegalStateException.class, l::next);
      assertTrue(e.getMessage().contains("2 steps of 2 need 4 rows, the order has 3"), e.getMessage());
    }
  }

  @Test
  void oneOrderIsCheckedUpFront() {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> new BatchLoader(store(4), new int[] {0, 1, 2}, 2, 2, 1));
    assertTrue(e.getMessage().contains("need 4 rows"), e.getMessage());
    assertThrows(IllegalArgumentException.class, () -> new BatchLoader.Segment(new int[0], -1));
  }

  /** Note [loader depth]: the trainer's depth is 64 MiB of batches, 2 to 8 of them. */
  @Test
  void theDefaultDepthHoldsAbout64MiBOfBatches() {
    org.junit.jupiter.api.Assumptions.assumeTrue(System.getProperty(BatchLoader.DEPTH_PROPERTY) == null);
    assertEquals(8, BatchLoader.defaultDepth(512L * 784 * 4)); // the Fashion-MNIST CNN: 1.6 MB
    assertEquals(4, BatchLoader.defaultDepth(4096L * 1024 * 4)); // the benchmark MLP: 16 MiB
    assertEquals(2, BatchLoader.defaultDepth(256L * 3 * 224 * 224 * 4)); // ResNet-50: 154 MB
    assertEquals(8, BatchLoader.defaultDepth(0));
    assertEquals(3, BatchLoader.defaultDepth(20L << 20));
  }
}
