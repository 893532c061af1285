package dev.sparktrainer.data;

import java.io.Serializable;

/**
 * The sampler-aware partitioning of one training job: which rank trains on which row, at which local
 * position, so that every rank runs the same number of steps and global batch t holds the same rows
 * whatever the world size W.
 *
 * <p>Row i goes to permuted position p = perm(i). Position p belongs to global batch t = p / (W*B); inside
 * it, rank r = (p / B) % W holds it at local position t*B + p % B. So global batch t is permuted positions
 * [t*W*B, (t+1)*W*B) for every W: W ranks with batch B see exactly the rows one rank with batch W*B sees.
 * The total is padded to a multiple of W*B by wrapping (positions n.. repeat the rows at positions 0..,
 * like torch's DistributedSampler), or cut to one with dropLast.
 */
public final class SamplerPlan implements Serializable {
  private static final long serialVersionUID = 1L;
  private final long rows;
  private final int world;
  private final int batch;
  private final boolean dropLast;
  private final Permutation perm;
  private final long steps;

  public SamplerPlan(long rows, int world, int batch, long seed, boolean dropLast) {
    if (batch <= 0) {
      throw new IllegalArgumentException("batch size must be > 0, got " + batch);
    }
    if (world <= 0) {
      throw new IllegalArgumentException("number of workers must be > 0, got " + world);
    }
    if (rows <= 0) {
      throw new IllegalArgumentException("the training data is empty; give at least one row");
    }
    long global = (long) world * batch;
    if (dropLast && rows < global) {
      throw new IllegalArgumentException("only " + rows + " rows but one global batch needs " + global
          + " (workers " + world + " x batch " + batch + ") with dropLast; lower the batch size or the "
          + "number of workers, or turn dropLast off");
    }
    this.rows = rows;
    this.world = world;
    this.batch = batch;
    this.dropLast = dropLast;
    this.perm = new Permutation(rows, seed);
    this.steps = dropLast ? rows / global : (rows + global - 1) / global;
  }

  /** Optimizer steps per epoch (every rank runs exactly this many). */
  public long stepsPerEpoch() {
    return steps;
  }

  /** Rows each rank holds (steps * batch). */
  public long rowsPerRank() {
    return steps * batch;
  }

  public int world() {
    return world;
  }

  public int batch() {
    return batch;
  }

  public long rows() {
    return rows;
  }

  /** Positions used: steps * W * B. */
  public long usedPositions() {
    return steps * world * batch;
  }

  /** Rank of permuted position p. */
  public int rankOf(long p) {
    return (int) ((p / batch) % world);
  }

  /** Local position of permuted position p within its rank. */
  public long localOf(long p) {
    long global = (long) world * batch;
    return (p / global) * batch + p % batch;
  }

  /**
   * The permuted positions row i occupies: its own (unless cut by dropLast) and, with padding, a second one
   * (n + p) when p falls in the wrapped prefix. Returns 0, 1 or 2 positions into {@code out}.
   */
  public int positionsOf(long row, long[] out) {
    long p = perm.apply(row);
    long used = usedPositions();
    int k = 0;
    if (p < used) {
      out[k++] = p;
    }
    if (!dropLast && rows + p < used) {
      out[k++] = rows + p;
    }
    return k;
  }

  /** For in-memory data: the global row index at each local position of {@code rank}, in local order. */
  public int[] rowsOfRank(int rank) {
    int[] out = new int[Math.toIntExact(rowsPerRank())];
    long[] pos = new long[2];
    for (long i = 0; i < rows; i++) {
      int k = positionsOf(i, pos);
      for (int j = 0; j < k; j++) {
        if (rankOf(pos[j]) == rank) {
          out[Math.toIntExact(localOf(pos[j]))] = (int) i;
        }
      }
    }
    return out;
  }
}
