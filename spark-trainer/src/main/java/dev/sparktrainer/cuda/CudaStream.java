package dev.sparktrainer.cuda;

import static jcuda.driver.JCudaDriver.cuCtxGetStreamPriorityRange;
import static jcuda.driver.JCudaDriver.cuStreamCreate;
import static jcuda.driver.JCudaDriver.cuStreamCreateWithPriority;
import static jcuda.driver.JCudaDriver.cuStreamDestroy;
import static jcuda.driver.JCudaDriver.cuStreamSynchronize;
import static jcuda.driver.JCudaDriver.cuStreamWaitEvent;

import jcuda.driver.CUstream;
import jcuda.driver.CUstream_flags;

/**
 * A non-blocking CUDA stream of one {@link CudaDevice} (compute, copy or comm). Owned by the device, which
 * destroys it on close; {@link #handle()} is the raw cudaStream_t handed to NCCL and cuBLASLt.
 */
public final class CudaStream implements AutoCloseable {
  private final CudaDevice device;
  private final String name;
  private final Cuda.StreamHandle stream = new Cuda.StreamHandle();
  private boolean closed;

  CudaStream(CudaDevice device, String name) {
    this(device, name, false);
  }

  /**
   * A stream of the device's highest priority when {@code high}: its kernels get SMs ahead of the compute
   * stream's waiting blocks, so collectives overlapping backward make progress between GEMM tiles instead
   * of queueing behind them (the comm stream).
   */
  CudaStream(CudaDevice device, String name, boolean high) {
    this.device = device;
    this.name = name;
    if (high) {
      int[] least = new int[1];
      int[] greatest = new int[1];
      Cuda.check(cuCtxGetStreamPriorityRange(least, greatest), "cuCtxGetStreamPriorityRange");
      Cuda.check(cuStreamCreateWithPriority(stream, CUstream_flags.CU_STREAM_NON_BLOCKING, greatest[0]),
          "cuStreamCreateWithPriority(" + name + ")");
    } else {
      Cuda.check(cuStreamCreate(stream, CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate(" + name + ")");
    }
  }

  CUstream cu() {
    if (closed) {
      throw new IllegalStateException("stream " + name + " of " + device.name() + " is closed");
    }
    return stream;
  }

  /** The raw cudaStream_t. */
  long handle() {
    cu();
    return stream.handle();
  }

  /** Stream name for messages ("compute", "copy", "comm"). */
  public String name() {
    return name;
  }

  /** Makes later work on this stream wait for {@code event} (no host wait). */
  public void waitFor(CudaEvent event) {
    device.makeCurrent();
    Cuda.check(cuStreamWaitEvent(cu(), event.cu(), 0), "cuStreamWaitEvent(" + name + ")");
  }

  /** Blocks the calling thread until all work queued on this stream is done. */
  public void synchronize() {
    device.makeCurrent();
    device.checkNotCapturing("cuStreamSynchronize(" + name + ")");
    Cuda.check(cuStreamSynchronize(cu()), "cuStreamSynchronize(" + name + ")");
  }

  /** Destroys the stream (the device calls this on close). Idempotent. */
  @Override
  public void close() {
    if (!closed) {
      closed = true;
      device.makeCurrent();
      Cuda.check(cuStreamDestroy(stream), "cuStreamDestroy(" + name + ")");
    }
  }
}
