package dev.sparktrainer.engine;

/**
 * bf16 rounding on the host, the same everywhere it happens (the CPU engine's bf16 ops, the CUDA engine's uploads,
 * the loader threads: Note [bf16 input on the loader threads] in data.BatchLoader): to nearest, ties to even, as
 * the GPU's cast; a NaN stays a NaN bf16 can hold.
 */
public final class Bf16 {
  private Bf16() {}

  /** v rounded to the nearest bf16 value, as a float. */
  public static float round(float v) {
    int bits = Float.floatToRawIntBits(v);
    if (Float.isNaN(v)) {
      // Keep it a NaN that bf16 can hold (quiet bit set), not one whose payload is only in the low 16 bits.
      return Float.intBitsToFloat((bits & 0xffff0000) | 0x00400000);
    }
    int lsb = (bits >>> 16) & 1;
    bits += 0x7fff + lsb;
    return Float.intBitsToFloat(bits & 0xffff0000);
  }

  /**
   * The bf16 bits of v rounded ({@link #round}). Note [branch-free bf16 bits]: the NaN case is a select, not a branch
   * before the rounding; the same bits as the branching version for all 2^32 floats (checked exhaustively when
   * written; Bf16Test keeps the boundaries). A Fashion-MNIST CNN batch (512 x 784 values) on the development machine
   * (benchmarks/results/2026-11-26-diagnostics/Bf16Staging.java, steady rounds): rounded into a bf16 pinned slot
   * 698-777 -> 444-531 us, into a short[] on a loader thread 674-708 -> 505-554 us.
   */
  public static short bits(float v) {
    int b = Float.floatToRawIntBits(v);
    int rounded = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    int quietNan = (b >>> 16) | 0x0040;
    return (short) ((b & 0x7fffffff) > 0x7f800000 ? quietNan : rounded);
  }

  /** dst[dstOffset + i] = bits(src[srcOffset + i]) for i in [0, n). */
  public static void bits(float[] src, int srcOffset, short[] dst, int dstOffset, int n) {
    for (int i = 0; i < n; i++) {
      dst[dstOffset + i] = bits(src[srcOffset + i]);
    }
  }

  /** The float a bf16 holds (exact). */
  public static float value(short bits) {
    return Float.intBitsToFloat((bits & 0xffff) << 16);
  }
}
