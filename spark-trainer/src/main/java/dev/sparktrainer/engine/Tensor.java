package dev.sparktrainer.engine;

/**
 * A typed, shaped view into memory owned by a {@link Device}. Tensors never own memory themselves: the
 * device's allocations (or a flat buffer) own it, and views share it. A tensor is used only with the device
 * that made it.
 */
public abstract class Tensor {
  private final DType dtype;
  private final int[] shape;
  private final long numel;

  protected Tensor(DType dtype, int[] shape) {
    this.dtype = dtype;
    this.shape = shape.clone();
    this.numel = Shape.numel(shape);
  }

  public DType dtype() {
    return dtype;
  }

  /** A copy of the shape. */
  public int[] shape() {
    return shape.clone();
  }

  public int dim(int i) {
    return shape[i];
  }

  public int rank() {
    return shape.length;
  }

  public long numel() {
    return numel;
  }

  /** Element count as an int; throws if the tensor is larger than 2^31-1 elements. */
  public int size() {
    return Math.toIntExact(numel);
  }

  /** The device whose memory this tensor views. */
  public abstract Device device();

  /**
   * Whether this 4-D (N, C, H, W) tensor stores its elements channels-last (NHWC order) instead of row-major.
   * Only devices whose {@link Device#supportsChannelsLast()} is true produce such tensors; their ops carry the
   * layout from inputs to outputs, and {@link #view}/{@link #reshape} always give row-major views (convert
   * first with {@link Device#convertLayout}). False by default.
   */
  public boolean channelsLast() {
    return false;
  }

  /** The allocation this tensor is a view of: tensors that share memory return the same object. */
  public abstract Object storage();

  /** A view of {@code shape} starting {@code elementOffset} elements into this tensor's memory. */
  public abstract Tensor view(long elementOffset, int... shape);

  /** The same memory with another shape of equal element count. */
  public Tensor reshape(int... newShape) {
    if (Shape.numel(newShape) != numel) {
      throw new IllegalArgumentException(
          "cannot reshape " + Shape.str(shape) + " to " + Shape.str(newShape) + ": element counts differ");
    }
    return view(0, newShape);
  }

  @Override
  public String toString() {
    return dtype.wireName() + Shape.str(shape) + "@" + device().name();
  }
}
