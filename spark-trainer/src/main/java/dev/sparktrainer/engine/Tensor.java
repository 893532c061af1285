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

  /**
   * The allocation this tensor is a view of, or the {@link #region} it is a view of: views of one allocation
   * (or of one region) return the same object, so a caller can tell a pass-through (a reshape, a view) from
   * another buffer.
   */
  public abstract Object storage();

  /** A view of {@code shape} starting {@code elementOffset} elements into this tensor's memory. */
  public abstract Tensor view(long elementOffset, int... shape);

  /**
   * A view of {@code shape} at {@code elementOffset}, as {@link #view}, that counts as an allocation of its own:
   * its {@link #storage()}, shared by its views, is a new object, not this tensor's. For a memory plan that places
   * many buffers in one allocation (Note [step memory plan] in nn.StepMemoryPlan): the buffers stay apart for
   * code that compares storages (a pass-through, the in-place residual add, the gradient pool's leases), as they
   * would as separate allocations. The region cannot be {@link Device#free freed}; its memory lives as long as
   * this tensor's.
   */
  public abstract Tensor region(long elementOffset, int... shape);

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
