package dev.sparktrainer.cuda;

import static jcuda.driver.JCudaDriver.cuMemAllocHost;
import static jcuda.driver.JCudaDriver.cuMemFreeHost;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jcuda.Pointer;

/**
 * Page-locked host memory (cuMemAllocHost) seen from Java as a direct little-endian {@link ByteBuffer}:
 * the staging area for host-device copies, which the GPU reads and writes by DMA. Owned by a
 * {@link CudaDevice}; close frees it (idempotent); use after close throws {@link IllegalStateException}.
 */
public final class PinnedBuffer implements AutoCloseable {
  private final CudaDevice device;
  private final Pointer pointer = new Pointer();
  private final long bytes;
  private final ByteBuffer buffer;
  private boolean closed;

  PinnedBuffer(CudaDevice device, long bytes) {
    this.device = device;
    this.bytes = bytes;
    device.makeCurrent();
    Cuda.check(cuMemAllocHost(pointer, bytes), "cuMemAllocHost(" + bytes + " bytes)");
    this.buffer = pointer.getByteBuffer(0, bytes).order(ByteOrder.LITTLE_ENDIAN);
  }

  /** The memory as a direct little-endian buffer (position 0, limit = capacity = size). */
  public ByteBuffer buffer() {
    if (closed) {
      throw new IllegalStateException("pinned buffer of " + device.name() + " used after close");
    }
    return buffer;
  }

  Pointer pointer() {
    buffer();
    return pointer;
  }

  /** Size in bytes. */
  public long bytes() {
    return bytes;
  }

  /** Frees the memory. Idempotent. */
  @Override
  public void close() {
    if (!closed) {
      closed = true;
      device.makeCurrent();
      Cuda.check(cuMemFreeHost(pointer), "cuMemFreeHost");
    }
  }
}
