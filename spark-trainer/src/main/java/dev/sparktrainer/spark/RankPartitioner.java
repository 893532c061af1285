package dev.sparktrainer.spark;

import org.apache.spark.Partitioner;

/**
 * Keys (Integer) are rank r (training rows) or W + r (validation rows, see {@link RankChunks}): partition = r,
 * so the barrier task of rank r reads exactly rank r's chunks.
 */
public final class RankPartitioner extends Partitioner {
  private static final long serialVersionUID = 2L;
  private final int world;

  public RankPartitioner(int world) {
    if (world <= 0) {
      throw new IllegalArgumentException("world size must be > 0, got " + world);
    }
    this.world = world;
  }

  @Override
  public int numPartitions() {
    return world;
  }

  @Override
  public int getPartition(Object key) {
    int k = (Integer) key;
    if (k < 0 || k >= 2 * world) {
      throw new IllegalArgumentException("key " + k + " outside [0, " + 2 * world + ") (world " + world + ")");
    }
    return k % world;
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof RankPartitioner p && p.world == world;
  }

  @Override
  public int hashCode() {
    return world;
  }
}
