package dev.sparktrainer.cuda;

import static jcuda.driver.JCudaDriver.cuCtxSetCurrent;
import static jcuda.driver.JCudaDriver.cuDeviceGet;
import static jcuda.driver.JCudaDriver.cuDeviceGetCount;
import static jcuda.driver.JCudaDriver.cuDeviceGetName;
import static jcuda.driver.JCudaDriver.cuDriverGetVersion;
import static jcuda.driver.JCudaDriver.cuGetErrorString;
import static jcuda.driver.JCudaDriver.cuInit;

import java.nio.charset.StandardCharsets;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUresult;

/**
 * Process-wide CUDA driver facts through JCuda: initialisation, device count, driver version, and the
 * return-code check used for every driver call of this package.
 */
public final class Cuda {
  private static final Object LOCK = new Object();
  private static Availability availability;
  private static final ThreadLocal<CUcontext> CURRENT = new ThreadLocal<>();

  private Cuda() {}

  /** Whether CUDA can be used here; when not, {@code reason} says why (no driver, no device, ...). */
  public record Availability(boolean available, int deviceCount, int driverVersion, String reason) {}

  /** Initialises the driver once and reports what it found; never throws. */
  public static Availability availability() {
    synchronized (LOCK) {
      if (availability == null) {
        availability = probe();
      }
      return availability;
    }
  }

  private static Availability probe() {
    try {
      int r = cuInit(0);
      if (r != CUresult.CUDA_SUCCESS) {
        return new Availability(false, 0, 0, "cuInit failed: " + errorText(r)
            + (r == CUresult.CUDA_ERROR_NO_DEVICE ? " (no NVIDIA GPU visible; check CUDA_VISIBLE_DEVICES)" : ""));
      }
      int[] v = new int[1];
      check(cuDriverGetVersion(v), "cuDriverGetVersion");
      int[] n = new int[1];
      check(cuDeviceGetCount(n), "cuDeviceGetCount");
      if (n[0] == 0) {
        return new Availability(false, 0, v[0], "the CUDA driver sees no device (check CUDA_VISIBLE_DEVICES)");
      }
      return new Availability(true, n[0], v[0], "ok");
    } catch (UnsatisfiedLinkError | NoClassDefFoundError | ExceptionInInitializerError e) {
      String m = String.valueOf(e.getMessage());
      int nl = m.indexOf('\n');
      m = nl > 0 ? m.substring(0, nl) : m;
      return new Availability(false, 0, 0, "JCuda could not load (" + e.getClass().getSimpleName() + ": "
          + (m.length() > 200 ? m.substring(0, 200) + "..." : m)
          + "); the NVIDIA driver (libcuda.so.1, R580+ for CUDA 13) is probably not installed");
    } catch (RuntimeException e) {
      return new Availability(false, 0, 0, e.getMessage());
    }
  }

  /** True when a CUDA device can be used. */
  public static boolean isAvailable() {
    return availability().available();
  }

  /** Number of CUDA devices (0 when CUDA is unavailable). */
  public static int deviceCount() {
    return availability().deviceCount();
  }

  /** The driver's CUDA version, e.g. 13000 for 13.0; throws when CUDA is unavailable. */
  public static int driverVersion() {
    Availability a = availability();
    if (a.driverVersion() == 0) {
      throw new CudaException("CUDA driver", -1, "CUDA is not available: " + a.reason());
    }
    return a.driverVersion();
  }

  /** The device's marketing name, e.g. "NVIDIA H100 80GB HBM3". */
  public static String deviceName(int ordinal) {
    requireAvailable();
    CUdevice d = new CUdevice();
    check(cuDeviceGet(d, ordinal), "cuDeviceGet(" + ordinal + ")");
    byte[] name = new byte[256];
    check(cuDeviceGetName(name, name.length, d), "cuDeviceGetName");
    int len = 0;
    while (len < name.length && name[len] != 0) {
      len++;
    }
    return new String(name, 0, len, StandardCharsets.US_ASCII);
  }

  static void requireAvailable() {
    Availability a = availability();
    if (!a.available()) {
      throw new CudaException("CUDA driver", -1, "CUDA is not available: " + a.reason());
    }
  }

  /** Throws a {@link CudaException} unless {@code result} is CUDA_SUCCESS. */
  static void check(int result, String what) {
    if (result != CUresult.CUDA_SUCCESS) {
      throw new CudaException("CUDA driver", result, what + " failed: " + errorText(result)
          + (result == CUresult.CUDA_ERROR_OUT_OF_MEMORY ? " (the GPU is out of memory: smaller batch or model,"
              + " or another process holds the device)" : ""));
    }
  }

  static String errorText(int result) {
    String[] s = new String[1];
    String text = cuGetErrorString(result, s) == CUresult.CUDA_SUCCESS && s[0] != null ? s[0] : "?";
    return CUresult.stringFor(result) + " (" + text + ")";
  }

  /** Makes {@code ctx} current on the calling thread (cheap when it already is, as far as we set it). */
  static void makeCurrent(CUcontext ctx) {
    if (CURRENT.get() != ctx) {
      check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
      CURRENT.set(ctx);
    }
  }

  /** Forgets the calling thread's current context (after the context was released). */
  static void forgetCurrent(CUcontext ctx) {
    if (CURRENT.get() == ctx) {
      CURRENT.remove();
    }
  }

  /** A JCuda device pointer at a raw address (JCuda passes nativePointer + byteOffset to the driver). */
  static CUdeviceptr ptr(long address) {
    return new CUdeviceptr().withByteOffset(address);
  }

  /** A CUdeviceptr whose raw address can be read back (JCuda keeps it in a protected field). */
  static final class AllocatedPtr extends CUdeviceptr {
    long address() {
      return getNativePointer() + getByteOffset();
    }
  }

  /** A CUstream whose raw handle can be read back (to pass to NCCL/cuBLASLt as cudaStream_t). */
  static final class StreamHandle extends jcuda.driver.CUstream {
    long handle() {
      return getNativePointer();
    }
  }
}
