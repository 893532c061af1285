package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;

/**
 * Shared helpers of the GPU tests: skip-or-fail when there is no GPU, tolerances, host copies.
 *
 * <p>Without a GPU (the development machine, CI) the GPU tests are skipped through JUnit assumptions whose
 * message says why. On the GPU machine the script sets {@code -Dsparktrainer.gpu.required=true}, and a
 * missing GPU, JNI library or second GPU then fails the test instead of skipping it.
 *
 * <p>Tolerances: "elementwise" relative error is max_i |gpu_i - cpu_i| / max(|cpu_i|, 1e-3 max_j |cpu_j|);
 * "normwise" is max_i |gpu_i - cpu_i| / max_j |cpu_j| (for matmul results, whose elements may cancel to
 * near zero while their error scales with the inputs).
 */
final class CudaTestSupport {
  static final double FP32_TOL = 1e-5;
  static final double BF16_TOL = 1e-2;

  private CudaTestSupport() {}

  static boolean required() {
    return Boolean.getBoolean("sparktrainer.gpu.required");
  }

  /** Skips (or fails, when required) unless at least {@code gpus} CUDA devices are visible. */
  static void assumeGpus(int gpus) {
    Cuda.Availability a = Cuda.availability();
    String why = !a.available() ? "no CUDA GPU: " + a.reason()
        : a.deviceCount() < gpus ? "needs " + gpus + " GPUs, " + a.deviceCount() + " visible" : null;
    if (why != null && required()) {
      throw new AssertionError("sparktrainer.gpu.required is set but " + why);
    }
    assumeTrue(why == null, why);
  }

  static void assumeGpu() {
    assumeGpus(1);
  }

  /** Skips (or fails, when required) unless the JNI library (NCCL, cuBLASLt) loads. */
  static void assumeJni() {
    String problem = NativeLoader.jniProblem();
    if (problem != null && required()) {
      throw new AssertionError("sparktrainer.gpu.required is set but the JNI library does not load: " + problem);
    }
    assumeTrue(problem == null, () -> "JNI library unavailable: " + problem);
  }

  static float[] host(Device d, Tensor t) {
    float[] out = new float[t.size()];
    d.download(t, out, 0);
    return out;
  }

  static int[] hostInts(Device d, Tensor t) {
    int[] out = new int[t.size()];
    d.download(t, out, 0);
    return out;
  }

  static double maxAbs(float[] a) {
    double m = 0;
    for (float v : a) {
      m = Math.max(m, Math.abs(v));
    }
    return m;
  }

  static double elementwiseRelErr(float[] expected, float[] actual) {
    double floor = Math.max(1e-3 * maxAbs(expected), 1e-30);
    double worst = 0;
    for (int i = 0; i < expected.length; i++) {
      double e = expected[i];
      double a = actual[i];
      if (Double.isNaN(e) || Double.isNaN(a)) {
        if (Double.isNaN(e) != Double.isNaN(a)) {
          return Double.POSITIVE_INFINITY;
        }
        continue;
      }
      worst = Math.max(worst, Math.abs(a - e) / Math.max(Math.abs(e), floor));
    }
    return worst;
  }

  static double normwiseRelErr(float[] expected, float[] actual) {
    double scale = Math.max(maxAbs(expected), 1e-30);
    double worst = 0;
    for (int i = 0; i < expected.length; i++) {
      worst = Math.max(worst, Math.abs((double) actual[i] - expected[i]) / scale);
    }
    return worst;
  }

  static void assertClose(float[] expected, float[] actual, double tol, String what) {
    assertTrue(expected.length == actual.length, what + ": lengths differ");
    double err = elementwiseRelErr(expected, actual);
    CudaTestLog.record(what, err, tol);
    assertTrue(err <= tol, what + ": max relative error " + err + " > " + tol);
  }

  static void assertCloseNormwise(float[] expected, float[] actual, double tol, String what) {
    assertTrue(expected.length == actual.length, what + ": lengths differ");
    double err = normwiseRelErr(expected, actual);
    CudaTestLog.record(what + " (normwise)", err, tol);
    assertTrue(err <= tol, what + ": max normwise relative error " + err + " > " + tol);
  }

  /**
   * The invariant of Note [cuDNN workspace] and Note [cuBLASLt workspace] after a call: the buffer ({@code bytes})
   * is the largest need so far rounded up to 1 MiB, within {@code limit}; while that need is 0 there is no buffer
   * and, when {@code arenaBefore >= 0} (the arena's bytes before the call), nothing was allocated. Returns whether
   * the need was 0.
   */
  static boolean checkWorkspace(CudaDevice gpu, String what, long need, long bytes, long limit, long arenaBefore) {
    org.junit.jupiter.api.Assertions.assertTrue(need >= 0 && need <= limit,
        what + ": need " + need + " beyond the limit " + limit);
    org.junit.jupiter.api.Assertions.assertEquals(CudaDevice.workspaceSize(need, limit), bytes,
        what + ": the workspace must be the largest need so far (" + need + " bytes) rounded up to 1 MiB");
    org.junit.jupiter.api.Assertions.assertTrue(bytes <= limit, what + ": workspace " + bytes + " above the limit "
        + limit);
    if (need != 0) {
      return false;
    }
    org.junit.jupiter.api.Assertions.assertEquals(0, bytes, what + ": no need, no workspace");
    if (arenaBefore >= 0) {
      org.junit.jupiter.api.Assertions.assertEquals(arenaBefore, gpu.arena().bytesInUse(),
          what + ": no need, no allocation");
    }
    return true;
  }
}
