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
  private boolean channelsLast; // Note [channels-last tensors] in CudaDevice

  CudaTensor(CudaDevice device, CudaBuffer buffer, long byteOffset, DType dtype, int[] shape) {
    super(dtype, shape);
    this.device = device;
    this.buffer = buffer;
    this.byteOffset = byteOffset;
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
    return buffer;
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
    if (elementOffset < 0 || elementOffset + Shape.numel(shape) > numel()) {
      throw new IndexOutOfBoundsException("view at " + elementOffset + " of shape " + Shape.str(shape)
          + " does not fit in " + this);
    }
    return new CudaTensor(device, buffer, byteOffset + elementOffset * dtype().bytes(), dtype(), shape);
  }
}
