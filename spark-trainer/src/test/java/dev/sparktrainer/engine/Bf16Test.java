package dev.sparktrainer.engine;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/** Bf16: bits, values and arrays agree with the rounding (to nearest, ties to even; NaN kept a NaN). */
class Bf16Test {
  @Test
  void bitsAreTheRoundedFloatsHighHalf() {
    SplittableRandom r = new SplittableRandom(5);
    float[] special = {0f, -0f, 1f, -1f, 1.00390625f /* a tie: 1 + 2^-8 */, 1.01171875f /* tie, odd: up */,
        Float.MIN_VALUE, -Float.MIN_VALUE, Float.MAX_VALUE, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY,
        Float.NaN, Float.intBitsToFloat(0x7f800001) /* NaN with low payload only */, 3.3895314e38f,
        // around Note [branch-free bf16 bits]'s NaN test and the largest finite values
        Float.intBitsToFloat(0x7fbfffff), Float.intBitsToFloat(0x7fc00000), Float.intBitsToFloat(0x7fffffff),
        Float.intBitsToFloat(0xff800001), Float.intBitsToFloat(0xffffffff), Float.intBitsToFloat(0x7f7fffff),
        Float.intBitsToFloat(0x7f7f8000), Float.intBitsToFloat(0x7f7f7fff), Float.intBitsToFloat(0xff7fffff),
        Float.intBitsToFloat(0x7f807fff), Float.intBitsToFloat(0x7f808000)};
    float[] all = new float[special.length + 10_000];
    System.arraycopy(special, 0, all, 0, special.length);
    for (int i = special.length; i < all.length; i++) {
      all[i] = Float.intBitsToFloat(r.nextInt());
    }
    short[] bits = new short[all.length + 3];
    Bf16.bits(all, 0, bits, 3, all.length);
    for (int i = 0; i < all.length; i++) {
      float v = all[i];
      float rounded = Bf16.round(v);
      assertEquals(0, Float.floatToRawIntBits(rounded) & 0xffff, "low half of " + v);
      assertEquals((short) (Float.floatToRawIntBits(rounded) >>> 16), Bf16.bits(v), "bits of " + v);
      assertEquals(Bf16.bits(v), bits[i + 3], "array bits of " + v);
      assertEquals(Float.floatToRawIntBits(rounded), Float.floatToRawIntBits(Bf16.value(Bf16.bits(v))),
          "value of the bits of " + v);
      if (Float.isNaN(v)) {
        assertEquals(true, Float.isNaN(rounded), "NaN stays NaN");
      } else if (!Float.isInfinite(v) && Math.abs(v) < 3.38e38f) {
        assertEquals(true, Math.abs(rounded - v) <= Math.ulp(rounded) * 32768 /* half a bf16 step */, v + " -> " + rounded);
      }
    }
    assertEquals(1f, Bf16.round(1.00390625f), "tie to even: down");
    assertEquals(1.015625f, Bf16.round(1.01171875f), "tie to even: up");
    assertArrayEquals(new short[] {0x3f80, (short) 0xbf80}, new short[] {Bf16.bits(1f), Bf16.bits(-1f)});
  }
}
