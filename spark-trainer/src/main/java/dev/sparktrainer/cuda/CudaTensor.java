package dev.sparktrainer.cuda;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;

/**
 * A tensor in GPU memory: a typed, shaped view {@code byteOffset} bytes into a {@link CudaBuffer}. FLOAT32
 * and INT32 take 4 bytes an element, BFLOAT16 2 (real bf16 storage, unlike the CPU engine's rounded
 * floats). Views share the buffer; once the buffer is closed, {@link #address()} throws.
 */
public final class CudaTensor extends Tensor {
  private final CudaDevice device;
  private final CudaBuffer buffer;
  private final long byteOffset;
  private final Object region; // the Tensor#region this views, or null: the buffer is its storage
  private final boolean root; // the whole buffer, as CudaDevice#allocate made it (the only tensors free takes)
  private boolean channelsLast; // Note [channels-last tensors] in CudaDevice

  /** The tensor {@link CudaDevice#allocate} returns: all of {@code buffer}. */
  CudaTensor(CudaDevice device, CudaBuffer buffer, DType dtype, int[] shape) {
    this(device, buffer, 0, dtype, shape, null, true);
  }

  private CudaTensor(CudaDevice device, CudaBuffer buffer, long byteOffset, DType dtype, int[] shape, Object region,
      boolean root) {
    super(dtype, shape);
    this.device = device;
    this.buffer = buffer;
    this.byteOffset = byteOffset;
    this.region = region;
    this.root = root;
    long end = byteOffset + numel() * dtype.bytes();
    if (byteOffset < 0 || end > buffer.bytes()) {
      throw new IndexOutOfBoundsException("view [" + byteOffset + ", " + end + ") bytes outside a buffer of "
          + buffer.bytes() + " bytes");
    }
  }

  @Override
  public Device device() {
    return device;
  }

  /** The device address of element 0; throws {@link IllegalStateException} when the memory was freed. */
  public long address() {
    return buffer.address() + byteOffset;
  }

  /** The buffer this tensor views. */
  public CudaBuffer buffer() {
    return buffer;
  }

  /** Size of the view in bytes. */
  public long bytes() {
    return numel() * dtype().bytes();
  }

  @Override
  public Object storage() {
    return region != null ? region : buffer;
  }

  /** Whether this is a tensor {@link CudaDevice#allocate} returned (not a view or a region of one). */
  boolean isRoot() {
    return root;
  }

  /** Whether this 4-D tensor holds its elements in NHWC order (Note [channels-last tensors] in CudaDevice). */
  @Override
  public boolean channelsLast() {
    return channelsLast;
  }

  void setChannelsLast(boolean on) {
    this.channelsLast = on;
  }

  /** A view of another shape or offset: always channels-first (row-major); see Note [channels-last tensors]. */
  @Override
  public CudaTensor view(long elementOffset, int... shape) {
    checkFits(elementOffset, shape, "view");
    return new CudaTensor(device, buffer, byteOffset + elementOffset * dtype().bytes(), dtype(), shape, region, false);
  }

  /** A {@link #view} with a storage of its own (Note [step memory plan] in nn.StepMemoryPlan); channels-first. */
  @Override
  public CudaTensor region(long elementOffset, int... shape) {
    checkFits(elementOffset, shape, "region");
    return new CudaTensor(device, buffer, byteOffset + elementOffset * dtype().bytes(), dtype(), shape, new Object(),
        false);
  }

  private void checkFits(long elementOffset, int[] shape, String what) {
    if (elementOffset < 0 || elementOffset + Shape.numel(shape) > numel()) {
      throw new IndexOutOfBoundsException(what + " at " + elementOffset + " of shape " + Shape.str(shape)
          + " does not fit in " + this);
    }
  }
}
