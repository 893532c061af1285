package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/** Pure host-side helpers of {@link CudaDevice} (no GPU needed). */
class CudaDeviceTest {
  static final long MIB = 1L << 20;

  /**
   * Note [cuDNN workspace] and Note [cuBLASLt workspace] in BlasLt: no buffer for no need; otherwise the need rounded
   * up to 1 MiB, never beyond the limit unless the need itself is (the native side never asks for that, but the
   * buffer must still hold it).
   */
  @Test
  void workspaceSizeRoundsUpToAMebibyteWithinTheLimit() {
    long limit = 512 * MIB;
    assertEquals(0, CudaDevice.workspaceSize(0, limit));
    assertEquals(0, CudaDevice.workspaceSize(-1, limit));
    assertEquals(MIB, CudaDevice.workspaceSize(1, limit));
    assertEquals(MIB, CudaDevice.workspaceSize(MIB, limit));
    assertEquals(2 * MIB, CudaDevice.workspaceSize(MIB + 1, limit));
    assertEquals(limit, CudaDevice.workspaceSize(limit - 1, limit));
    assertEquals(limit, CudaDevice.workspaceSize(limit, limit));
    long odd = 3 * MIB + 5; // a limit that is no multiple of 1 MiB caps the rounding
    assertEquals(odd, CudaDevice.workspaceSize(3 * MIB + 1, odd));
    assertEquals(odd + 7, CudaDevice.workspaceSize(odd + 7, odd)); // above the limit: the need itself
    assertEquals(5, CudaDevice.workspaceSize(5, 0)); // a zero limit: the need itself
    assertEquals(Long.MAX_VALUE, CudaDevice.workspaceSize(Long.MAX_VALUE, Long.MAX_VALUE)); // no overflow
    long lt = BlasLt.WORKSPACE_BYTES; // cuBLASLt's limit, 32 MiB
    assertEquals(0, CudaDevice.workspaceSize(0, lt));
    assertEquals(MIB, CudaDevice.workspaceSize(256, lt));
    assertEquals(5 * MIB, CudaDevice.workspaceSize(4 * MIB + 4096, lt));
    assertEquals(lt, CudaDevice.workspaceSize(lt - 100, lt));
    assertEquals(lt, CudaDevice.workspaceSize(lt, lt));
  }
}
