package dev.sparktrainer.cuda;

import static jcuda.driver.JCudaDriver.cuEventCreate;
import static jcuda.driver.JCudaDriver.cuEventDestroy;
import static jcuda.driver.JCudaDriver.cuEventQuery;
import static jcuda.driver.JCudaDriver.cuEventRecord;
import static jcuda.driver.JCudaDriver.cuEventSynchronize;

import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUresult;

/**
 * A CUDA event (timing disabled) of one {@link CudaDevice}: record it on a stream, make another stream wait
 * for it, or poll it. Created by {@link CudaDevice#newEvent}; close it when done (the device closes the ones
 * still open when it closes).
 */
public final class CudaEvent implements AutoCloseable {
  private final CudaDevice device;
  private final CUevent event = new CUevent();
  private boolean closed;

  CudaEvent(CudaDevice device) {
    this.device = device;
    device.makeCurrent();
    Cuda.check(cuEventCreate(event, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
  }

  CUevent cu() {
    if (closed) {
      throw new IllegalStateException("event of " + device.name() + " is closed");
    }
    return event;
  }

  /** Captures the work queued on {@code stream} so far. */
  public void record(CudaStream stream) {
    device.makeCurrent();
    Cuda.check(cuEventRecord(cu(), stream.cu()), "cuEventRecord(" + stream.name() + ")");
  }

  /** True when the captured work is done; throws if it failed. Never blocks. */
  public boolean isDone() {
    device.makeCurrent();
    device.checkNotCapturing("cuEventQuery (polling an event)");
    int r = cuEventQuery(cu());
    if (r == CUresult.CUDA_ERROR_NOT_READY) {
      return false;
    }
    Cuda.check(r, "cuEventQuery");
    return true;
  }

  /** Blocks until the captured work is done. */
  public void synchronize() {
    device.makeCurrent();
    device.checkNotCapturing("cuEventSynchronize");
    Cuda.check(cuEventSynchronize(cu()), "cuEventSynchronize");
  }

  /** Destroys the event. Idempotent. */
  @Override
  public void close() {
    if (!closed) {
      closed = true;
      device.forgetEvent(this);
      device.makeCurrent();
      Cuda.check(cuEventDestroy(event), "cuEventDestroy");
    }
  }
}
