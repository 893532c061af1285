package dev.sparktrainer.checkpoint;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Shape;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * One tensor of a checkpoint on the host, immutable: dtype, shape and the elements as little-endian bytes
 * (the form they have in the file). Sizes are checked on construction: bytes = product(shape) * dtype size,
 * at most {@link #MAX_BYTES}.
 */
public final class TensorData {
  /** Largest tensor one entry can hold (one Java array). */
  public static final int MAX_BYTES = Integer.MAX_VALUE - 8;

  private final DType dtype;
  private final int[] shape;
  private final long numel;
  private final byte[] bytes; // (numel * dtype.bytes()), little-endian, never exposed writable

  private TensorData(DType dtype, int[] shape, byte[] bytes) {
    this.dtype = dtype;
    this.shape = shape.clone();
    int size = byteSizeOf(dtype, this.shape); // checks dims and overflow first
    this.numel = Shape.numel(this.shape);
    if (bytes.length != size) {
      throw new IllegalArgumentException("tensor " + dtype.wireName() + Shape.str(this.shape) + " needs "
          + size + " bytes, got " + bytes.length);
    }
    this.bytes = bytes;
  }

  /** Bytes for {@code shape} of {@code dtype}; rejects negative dims and sizes over {@link #MAX_BYTES}. */
  static int byteSizeOf(DType dtype, int[] shape) {
    long n;
    try {
      n = Math.multiplyExact(Shape.numel(shape), (long) dtype.bytes());
    } catch (ArithmeticException e) {
      n = Long.MAX_VALUE;
    }
    if (n > MAX_BYTES) {
      throw new IllegalArgumentException("tensor " + dtype.wireName() + Shape.str(shape)
          + " is larger than the " + MAX_BYTES + " bytes one checkpoint entry holds");
    }
    return (int) n;
  }

  /**
   * A tensor from little-endian element bytes: copies {@code data.remaining()} bytes from its position
   * (the buffer's own byte-order setting is irrelevant; its position is not moved).
   */
  public static TensorData of(DType dtype, int[] shape, ByteBuffer data) {
    byte[] b = new byte[data.remaining()];
    data.duplicate().get(b);
    return new TensorData(dtype, shape, b);
  }

  /** A FLOAT32 tensor holding a copy of {@code values} (length = product(shape)). */
  public static TensorData ofFloats(int[] shape, float[] values) {
    if (values.length != Shape.numel(shape)) {
      throw new IllegalArgumentException(values.length + " values for shape " + Shape.str(shape));
    }
    return fromFloats(DType.FLOAT32, shape, values, 0);
  }

  /** An INT32 tensor holding a copy of {@code values} (length = product(shape)). */
  public static TensorData ofInts(int[] shape, int[] values) {
    if (values.length != Shape.numel(shape)) {
      throw new IllegalArgumentException(values.length + " values for shape " + Shape.str(shape));
    }
    return fromInts(shape, values, 0);
  }

  /**
   * FLOAT32 or BFLOAT16 from {@code src[srcOffset ..]}. For BFLOAT16 the values must already be bf16
   * numbers (as a device download of a bf16 tensor gives): the upper 16 bits are stored.
   */
  static TensorData fromFloats(DType dtype, int[] shape, float[] src, int srcOffset) {
    byte[] b = new byte[byteSizeOf(dtype, shape)];
    int n = Math.toIntExact(Shape.numel(shape));
    ByteBuffer bb = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
    if (dtype == DType.FLOAT32) {
      bb.asFloatBuffer().put(src, srcOffset, n);
    } else if (dtype == DType.BFLOAT16) {
      for (int k = 0; k < n; k++) {
        bb.putShort(2 * k, (short) (Float.floatToRawIntBits(src[srcOffset + k]) >>> 16));
      }
    } else {
      throw new IllegalArgumentException("fromFloats needs float32 or bfloat16, got " + dtype.wireName());
    }
    return new TensorData(dtype, shape, b);
  }

  /** INT32 from {@code src[srcOffset ..]}. */
  static TensorData fromInts(int[] shape, int[] src, int srcOffset) {
    byte[] b = new byte[byteSizeOf(DType.INT32, shape)];
    ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).asIntBuffer()
        .put(src, srcOffset, Math.toIntExact(Shape.numel(shape)));
    return new TensorData(DType.INT32, shape, b);
  }

  /** Takes ownership of {@code bytes} without copying (the reader's freshly filled array). */
  static TensorData wrapOwned(DType dtype, int[] shape, byte[] bytes) {
    return new TensorData(dtype, shape, bytes);
  }

  public DType dtype() {
    return dtype;
  }

  /** A copy of the shape. */
  public int[] shape() {
    return shape.clone();
  }

  public long numel() {
    return numel;
  }

  /** Size of the element bytes (product(shape) * dtype size). */
  public int byteSize() {
    return bytes.length;
  }

  /** The element bytes: a read-only little-endian view, position 0. */
  public ByteBuffer bytes() {
    return ByteBuffer.wrap(bytes).asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
  }

  /** The backing array, for writing it out; callers in this package never modify it. */
  byte[] array() {
    return bytes;
  }

  /** The elements as floats (FLOAT32, or BFLOAT16 widened exactly). */
  public float[] toFloats() {
    float[] out = new float[Math.toIntExact(numel)];
    copyFloatsTo(out, 0);
    return out;
  }

  /** The elements as ints (INT32 only). */
  public int[] toInts() {
    int[] out = new int[Math.toIntExact(numel)];
    copyIntsTo(out, 0);
    return out;
  }

  /** dst[dstOffset + i] = element i (FLOAT32 or BFLOAT16). */
  void copyFloatsTo(float[] dst, int dstOffset) {
    ByteBuffer bb = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
    int n = Math.toIntExact(numel);
    if (dtype == DType.FLOAT32) {
      bb.asFloatBuffer().get(dst, dstOffset, n);
    } else if (dtype == DType.BFLOAT16) {
      for (int k = 0; k < n; k++) {
        dst[dstOffset + k] = Float.intBitsToFloat((bb.getShort(2 * k) & 0xffff) << 16);
      }
    } else {
      throw new IllegalStateException("tensor is " + dtype.wireName() + ", not a float type");
    }
  }

  /** dst[dstOffset + i] = element i (INT32). */
  void copyIntsTo(int[] dst, int dstOffset) {
    if (dtype != DType.INT32) {
      throw new IllegalStateException("tensor is " + dtype.wireName() + ", not int32");
    }
    ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asIntBuffer().get(dst, dstOffset, Math.toIntExact(numel));
  }

  /** Same dtype, same shape, same bytes (bitwise; NaN payloads and -0.0 included). */
  @Override
  public boolean equals(Object o) {
    return o instanceof TensorData t && dtype == t.dtype && Arrays.equals(shape, t.shape)
        && Arrays.equals(bytes, t.bytes);
  }

  @Override
  public int hashCode() {
    return (dtype.hashCode() * 31 + Arrays.hashCode(shape)) * 31 + Arrays.hashCode(bytes);
  }

  @Override
  public String toString() {
    return dtype.wireName() + Shape.str(shape);
  }
}
