package dev.sparktrainer.cpu;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;

/**
 * A tensor on the CPU: a view into a Java array. FLOAT32 and BFLOAT16 views share a float[] (bf16 values are
 * stored rounded to bf16 precision); INT32 views share an int[].
 */
public final class CpuTensor extends Tensor {
  private final CpuDevice device;
  final float[] f;
  final int[] i;
  final int offset;
  private final Object region; // the Tensor#region this views, or null: the whole array is its storage
  final boolean root; // made by CpuDevice#allocate (the only tensors CpuDevice#free takes)

  CpuTensor(CpuDevice device, DType dtype, int[] shape, float[] f, int[] i, int offset) {
    this(device, dtype, shape, f, i, offset, null, true);
  }

  private CpuTensor(CpuDevice device, DType dtype, int[] shape, float[] f, int[] i, int offset, Object region,
      boolean root) {
    super(dtype, shape);
    this.device = device;
    this.f = f;
    this.i = i;
    this.offset = offset;
    this.region = region;
    this.root = root;
    long end = offset + Shape.numel(shape);
    long cap = f != null ? f.length : i.length;
    if (offset < 0 || end > cap) {
      throw new IndexOutOfBoundsException(
          "view [" + offset + ", " + end + ") outside an allocation of " + cap + " elements");
    }
  }

  @Override
  public Device device() {
    return device;
  }

  @Override
  public Object storage() {
    return region != null ? region : f != null ? f : i;
  }

  @Override
  public CpuTensor view(long elementOffset, int... shape) {
    checkFits(elementOffset, shape, "view");
    return new CpuTensor(device, dtype(), shape, f, i, Math.toIntExact(offset + elementOffset), region, false);
  }

  @Override
  public CpuTensor region(long elementOffset, int... shape) {
    checkFits(elementOffset, shape, "region");
    return new CpuTensor(device, dtype(), shape, f, i, Math.toIntExact(offset + elementOffset), new Object(), false);
  }

  private void checkFits(long elementOffset, int[] shape, String what) {
    if (elementOffset < 0 || elementOffset + Shape.numel(shape) > numel()) {
      throw new IndexOutOfBoundsException(what + " at " + elementOffset + " of shape " + Shape.str(shape)
          + " does not fit in " + this);
    }
  }

  /** The backing float array (FLOAT32/BFLOAT16); elements start at {@link #offset()}. */
  public float[] floats() {
    if (f == null) {
      throw new IllegalStateException(this + " is not a float tensor");
    }
    return f;
  }

  /** The backing int array (INT32); elements start at {@link #offset()}. */
  public int[] ints() {
    if (i == null) {
      throw new IllegalStateException(this + " is not an int tensor");
    }
    return i;
  }

  /** Index of this view's first element in the backing array. */
  public int offset() {
    return offset;
  }
}
