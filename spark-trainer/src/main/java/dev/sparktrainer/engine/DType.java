package dev.sparktrainer.engine;

/** Element types the engine knows. Checkpoints store the lower-case name. */
public enum DType {
  FLOAT32(4), INT32(4), BFLOAT16(2);

  private final int bytes;

  DType(int bytes) {
    this.bytes = bytes;
  }

  /** Bytes per element. */
  public int bytes() {
    return bytes;
  }

  /** Name used in checkpoint headers ("float32", "int32", "bfloat16"). */
  public String wireName() {
    return name().toLowerCase(java.util.Locale.ROOT);
  }

  /** Inverse of {@link #wireName()}; rejects unknown names with a clear message. */
  public static DType fromWireName(String s) {
    for (DType d : values()) {
      if (d.wireName().equals(s)) {
        return d;
      }
    }
    throw new IllegalArgumentException("unknown dtype '" + s + "' (expected float32, int32 or bfloat16)");
  }
}
