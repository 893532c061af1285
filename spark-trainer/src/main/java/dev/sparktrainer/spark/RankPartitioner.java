package dev.sparktrainer.spark;

import org.apache.spark.Partitioner;

/** Keys are rank * rowsPerRank + localPosition: partition = rank, and sorting by key gives local order. */
public final class RankPartitioner extends Partitioner {
  private static final long serialVersionUID = 1L;
  private final int world;
  private final long rowsPerRank;

  public RankPartitioner(int world, long rowsPerRank) {
    this.world = world;
    this.rowsPerRank = rowsPerRank;
  }

  @Override
  public int numPartitions() {
    return world;
  }

  @Override
  public int getPartition(Object key) {
    return (int) ((Long) key / rowsPerRank);
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof RankPartitioner p && p.world == world && p.rowsPerRank == rowsPerRank;
  }

  @Override
  public int hashCode() {
    return Long.hashCode(rowsPerRank) * 31 + world;
  }
}
