package dev.sparktrainer.engine;

/**
 * Counter-based random numbers: the value at index i depends only on (seed, i), so any backend, any thread
 * layout and any resume point draw the same numbers. The CUDA kernels in native/ implement the same
 * function (keep them in sync).
 */
public final class Rng {
  private Rng() {}

  /** SplitMix64 finaliser. */
  public static long mix(long z) {
    z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
    z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
    return z ^ (z >>> 31);
  }

  /** A uniform float in [0, 1) from (seed, index): 24 high bits of mix(seed * golden + index). */
  public static float uniform(long seed, long index) {
    long h = mix(mix(seed) + index * 0x9e3779b97f4a7c15L);
    return (h >>> 40) * 0x1.0p-24f;
  }

  /** Derives an independent seed for a named stream (a layer, an epoch) from a base seed. */
  public static long derive(long seed, long stream) {
    return mix(seed ^ mix(stream + 0x632be59bd9b4e019L));
  }
}
