package dev.sparktrainer.train;

import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;

/**
 * Which gradient buckets' optimizer work each rank does under Note [sharded optimizer] (in {@link Trainer}). Bucket i
 * is [starts[i + 1], starts[i]) of the flat buffers, as {@link Trainer#bucketStarts}. A bucket whose length splits into
 * worldSize slices of whole ParameterSet.ALIGN blocks is sharded: rank r owns slice r, [lo + r len / W, lo + (r + 1)
 * len / W), which its optimizer updates; the others are replicated: all-reduced, and every rank updates all of it.
 */
final class ShardPlan {
  private final long[] starts;
  private final boolean[] sharded;
  private final long[][] owned; // per bucket: the {from, to} this rank updates

  private ShardPlan(long[] starts, int world, int rank) {
    this.starts = starts.clone();
    this.sharded = new boolean[starts.length - 1];
    this.owned = new long[sharded.length][];
    for (int i = 0; i < sharded.length; i++) {
      long lo = starts[i + 1];
      long len = starts[i] - lo;
      sharded[i] = len > 0 && len % ((long) world * ParameterSet.ALIGN) == 0;
      owned[i] = sharded[i] ? new long[] {lo + rank * len / world, lo + (rank + 1) * len / world}
          : new long[] {lo, starts[i]};
    }
  }

  static ShardPlan of(long[] bucketStarts, int world, int rank) {
    if (world < 2 || rank < 0 || rank >= world) {
      throw new IllegalArgumentException("rank " + rank + " of " + world + ": sharding needs at least 2 ranks");
    }
    if (bucketStarts.length < 2) {
      throw new IllegalArgumentException("no buckets to shard");
    }
    return new ShardPlan(bucketStarts, world, rank);
  }

  int buckets() {
    return sharded.length;
  }

  boolean sharded(int i) {
    return sharded[i];
  }

  long lo(int i) {
    return starts[i + 1];
  }

  long hi(int i) {
    return starts[i];
  }

  /** The element ranges this rank's optimizer updates: its slice of each sharded bucket, all of each other one. */
  long[][] owned() {
    return owned.clone();
  }

  /** The range this rank's optimizer updates in bucket i (see {@link #owned()}). */
  long[] owned(int i) {
    return owned[i];
  }

  /** Bucket i of the flat buffer t (the gradients, the weights, their mirror or optimizer state). */
  Tensor view(Tensor t, int i) {
    return t.view(lo(i), Math.toIntExact(hi(i) - lo(i)));
  }

  /** Elements in sharded buckets (each rank updates 1 / W of them). */
  long shardedElements() {
    long n = 0;
    for (int i = 0; i < sharded.length; i++) {
      n += sharded[i] ? hi(i) - lo(i) : 0;
    }
    return n;
  }
}
