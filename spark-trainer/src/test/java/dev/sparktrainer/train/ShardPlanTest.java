package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.Arrays;
import org.junit.jupiter.api.Test;

/** Note [sharded optimizer] (Trainer): which slices each rank owns, and when a fit does not shard. */
class ShardPlanTest {
  @Test
  void ranksOwnDisjointSlicesOfShardedBucketsAndAllOfTheOthers() {
    // buckets, from the end: [1000, 1256) 256 elements, [744, 1000) 256, [64, 744) 680 (not 2 x 64 blocks), [0, 64) 64
    long[] starts = {1256, 1000, 744, 64, 0};
    ShardPlan r0 = ShardPlan.of(starts, 2, 0);
    ShardPlan r1 = ShardPlan.of(starts, 2, 1);
    assertEquals(4, r0.buckets());
    assertTrue(r0.sharded(0));
    assertTrue(r0.sharded(1));
    assertFalse(r0.sharded(2), "680 elements do not split into 2 slices of whole 64-element blocks");
    assertFalse(r0.sharded(3));
    assertEquals(512, r0.shardedElements());
    assertArrayEquals(new long[][] {{1000, 1128}, {744, 872}, {64, 744}, {0, 64}}, r0.owned());
    assertArrayEquals(new long[][] {{1128, 1256}, {872, 1000}, {64, 744}, {0, 64}}, r1.owned());
    // every element is updated by its owner, and the sharded ones by exactly one rank
    int[] updates = new int[1256];
    for (ShardPlan p : new ShardPlan[] {r0, r1}) {
      for (long[] r : p.owned()) {
        for (long i = r[0]; i < r[1]; i++) {
          updates[(int) i]++;
        }
      }
    }
    for (int i = 0; i < updates.length; i++) {
      assertEquals(i >= 744 ? 1 : 2, updates[i], "element " + i);
    }
    long[][] three = ShardPlan.of(new long[] {384, 0}, 3, 2).owned();
    assertArrayEquals(new long[][] {{256, 384}}, three);
  }

  @Test
  void oneRankHasNothingToShard() {
    assertThrows(IllegalArgumentException.class, () -> ShardPlan.of(new long[] {128, 0}, 1, 0));
    try (CpuDevice d = new CpuDevice()) {
      Model m = new Model(ModelSpec.mlp(8, new int[] {16}, 3, "relu", 0f), d, DType.FLOAT32);
      TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(4).seed(1)
          .optimizer(OptimizerConfig.sgd(0.1)).build();
      Trainer t = new Trainer(m, cfg, new LocalCommunicator()).shardOptimizer(true);
      t.initializeWeights();
      float[] x = new float[8 * 8];
      int[] y = new int[8];
      Arrays.fill(x, 0.5f);
      HeapRowStore store = new HeapRowStore(x, y, 8);
      t.fit(store, new int[] {0, 1, 2, 3, 4, 5, 6, 7}, 2);
      assertFalse(t.shardedOptimizer());
      assertEquals("one rank", t.shardingOffReason());
    }
  }
}
