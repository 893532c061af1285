package dev.sparktrainer.cuda;

/**
 * A cuDNN handle bound to a device's compute stream, for the layers that need cuDNN (convolutions, a later
 * issue). cuDNN is opened by the JNI library on first use, so machines without cuDNN run everything else.
 * Created by {@link CudaDevice#cudnn()}, owned and closed by the device.
 */
public final class CudnnHandle implements AutoCloseable {
  private final CudaDevice device;
  private final long version;
  private long handle;

  CudnnHandle(CudaDevice device, CudaStream stream) {
    this.device = device;
    NativeLoader.loadJni();
    device.makeCurrent();
    long[] out = new long[1];
    Native.check(Native.cudnnCreate(out), "cudnnCreate on " + device.name());
    this.handle = out[0];
    try {
      Native.check(Native.cudnnSetStream(handle, stream.handle()), "cudnnSetStream");
      long[] v = new long[4];
      Native.check(Native.versions(v), "versions");
      this.version = v[3];
    } catch (RuntimeException e) {
      Native.cudnnDestroy(handle);
      handle = 0;
      throw e;
    }
  }

  /** cuDNN's version number, e.g. 91400 for 9.14.0. */
  public long version() {
    return version;
  }

  /** The raw cudnnHandle_t (for the JNI calls of later layers). */
  long handle() {
    if (handle == 0) {
      throw new IllegalStateException("cuDNN handle of " + device.name() + " is closed");
    }
    return handle;
  }

  /** Destroys the handle. Idempotent. */
  @Override
  public void close() {
    if (handle != 0) {
      long h = handle;
      handle = 0;
      device.makeCurrent();
      Native.check(Native.cudnnDestroy(h), "cudnnDestroy");
    }
  }
}
