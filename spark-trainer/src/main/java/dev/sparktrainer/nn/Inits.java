package dev.sparktrainer.nn;

import dev.sparktrainer.engine.ParameterSet;
import java.util.SplittableRandom;

/** Host-side initial values drawn from the model's seeded generator (the same on every backend and rank). */
final class Inits {
  private Inits() {}

  /** U(-bound, bound) into one entry of the flat host array. */
  static void uniform(float[] host, ParameterSet.Entry e, double bound, SplittableRandom rng) {
    for (long k = 0; k < e.numel(); k++) {
      host[Math.toIntExact(e.offset() + k)] = (float) ((rng.nextDouble() * 2 - 1) * bound);
    }
  }

  /** value into every element of one entry. */
  static void fill(float[] host, ParameterSet.Entry e, float value) {
    java.util.Arrays.fill(host, Math.toIntExact(e.offset()), Math.toIntExact(e.offset() + e.numel()), value);
  }

  /** A standard normal draw (Box-Muller on two uniforms; deterministic for the generator's state). */
  static double gaussian(SplittableRandom rng) {
    double u1 = 1.0 - rng.nextDouble(); // (0, 1]
    double u2 = rng.nextDouble();
    return Math.sqrt(-2.0 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
}
