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
}
