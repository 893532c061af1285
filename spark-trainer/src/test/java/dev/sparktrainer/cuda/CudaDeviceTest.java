package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/** Pure host-side helpers of {@link CudaDevice} (no GPU needed). */
class CudaDeviceTest {
  static final long MIB = 1L << 20;

  /**
   * Note [cuDNN workspace]: no buffer for no need; otherwise the need rounded up to 1 MiB, never beyond the limit
   * unless the need itself is (the native side never asks for that, but the buffer must still hold it).
   */
  @Test
  void cudnnWorkspaceSizeRoundsUpToAMebibyteWithinTheLimit() {
    long limit = 512 * MIB;
    assertEquals(0, CudaDevice.cudnnWorkspaceSize(0, limit));
    assertEquals(0, CudaDevice.cudnnWorkspaceSize(-1, limit));
    assertEquals(MIB, CudaDevice.cudnnWorkspaceSize(1, limit));
    assertEquals(MIB, CudaDevice.cudnnWorkspaceSize(MIB, limit));
    assertEquals(2 * MIB, CudaDevice.cudnnWorkspaceSize(MIB + 1, limit));
    assertEquals(limit, CudaDevice.cudnnWorkspaceSize(limit - 1, limit));
    assertEquals(limit, CudaDevice.cudnnWorkspaceSize(limit, limit));
    long odd = 3 * MIB + 5; // a limit that is no multiple of 1 MiB caps the rounding
    assertEquals(odd, CudaDevice.cudnnWorkspaceSize(3 * MIB + 1, odd));
    assertEquals(odd + 7, CudaDevice.cudnnWorkspaceSize(odd + 7, odd)); // above the limit: the need itself
    assertEquals(5, CudaDevice.cudnnWorkspaceSize(5, 0)); // a zero limit: the need itself
    assertEquals(Long.MAX_VALUE, CudaDevice.cudnnWorkspaceSize(Long.MAX_VALUE, Long.MAX_VALUE)); // no overflow
  }
}
