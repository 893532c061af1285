package dev.sparktrainer.data;

import dev.sparktrainer.engine.Rng;

/**
 * A seeded bijection of [0, n) computed in O(1) per index (a 4-round Feistel network over the next even
 * power of two, with cycle walking), so the driver never materialises a permutation of all rows: each row
 * computes its own permuted position from its global index.
 */
public final class Permutation implements java.io.Serializable {
  private static final long serialVersionUID = 1L;
  private static final int ROUNDS = 4;
  private final long n;
  private final long seed;
  private final int halfBits;
  private final long halfMask;

  public Permutation(long n, long seed) {
    if (n <= 0) {
      throw new IllegalArgumentException("permutation size must be > 0, got " + n);
    }
    this.n = n;
    this.seed = seed;
    int bits = 64 - Long.numberOfLeadingZeros(Math.max(1, n - 1));
    bits = Math.max(2, bits + (bits & 1));
    this.halfBits = bits / 2;
    this.halfMask = (1L << halfBits) - 1;
  }

  public long size() {
    return n;
  }

  /** The permuted position of index i (a bijection of [0, n)). */
  public long apply(long i) {
    if (i < 0 || i >= n) {
      throw new IndexOutOfBoundsException("index " + i + " outside [0, " + n + ")");
    }
    long x = i;
    do {
      x = encrypt(x);
    } while (x >= n);
    return x;
  }

  private long encrypt(long x) {
    long left = x >>> halfBits;
    long right = x & halfMask;
    for (int r = 0; r < ROUNDS; r++) {
      long f = Rng.mix(seed + r * 0x9e3779b97f4a7c15L + right) & halfMask;
      long next = left ^ f;
      left = right;
      right = next;
    }
    return (left << halfBits) | right;
  }
}
