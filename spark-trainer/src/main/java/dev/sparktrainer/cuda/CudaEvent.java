package dev.sparktrainer.cuda;

import static jcuda.driver.JCudaDriver.cuEventCreate;
import static jcuda.driver.JCudaDriver.cuEventDestroy;
import static jcuda.driver.JCudaDriver.cuEventElapsedTime;
import static jcuda.driver.JCudaDriver.cuEventQuery;
import static jcuda.driver.JCudaDriver.cuEventRecord;
import static jcuda.driver.JCudaDriver.cuEventSynchronize;

import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUresult;

/**
 * A CUDA event of one {@link CudaDevice}: record it on a stream, make another stream wait for it, or poll it.
 * Timing is disabled (cheaper) except for the events of a timeline (Note [step timeline], CudaTimeline).
 * Created by {@link CudaDevice#newEvent}; close it when done (the device closes the ones still open when it
 * closes).
 */
public final class CudaEvent implements AutoCloseable {
  private final CudaDevice device;
  private final CUevent event = new CUevent();
  private final boolean timing;
  private boolean closed;

  CudaEvent(CudaDevice device, boolean timing) {
    this.device = device;
    this.timing = timing;
    device.makeCurrent();
    Cuda.check(cuEventCreate(event, timing ? CUevent_flags.CU_EVENT_DEFAULT : CUevent_flags.CU_EVENT_DISABLE_TIMING),
        "cuEventCreate");
  }

  /**
   * Milliseconds of device time from {@code start} to this event; both must be timing events, recorded and done
   * (cuEventElapsedTime).
   */
  float millisSince(CudaEvent start) {
    if (!timing || !start.timing) {
      throw new IllegalStateException("millisSince needs two timing events");
    }
    device.makeCurrent();
    float[] ms = new float[1];
    Cuda.check(cuEventElapsedTime(ms, start.cu(), cu()), "cuEventElapsedTime");
    return ms[0];
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
