package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Where the loader looks and what it says when something is missing (without a GPU), and that a fatbin built from
 * other sources is refused (on a GPU).
 */
class CudaNativeLoaderTest {
  /** A fatbin whose st_abi_version is not Kernels.ABI_VERSION (other sources: -Dsparktrainer.native.dir) is refused. */
  @Test
  void aFatbinOfAnotherKernelAbiIsRefusedAtLoad() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      d.makeCurrent();
      byte[] image = NativeLoader.kernelImage(Cuda.driverVersion() / 1000);
      try (Kernels k = new Kernels(image)) { // this build's own
        assertTrue(k.get("st_abi_version") != null);
      }
      CudaException e = assertThrows(CudaException.class, () -> new Kernels(image, Kernels.ABI_VERSION + 1));
      assertTrue(e.getMessage().contains("kernel ABI " + Kernels.ABI_VERSION + ", this jar needs "
          + (Kernels.ABI_VERSION + 1)), e.getMessage());
      assertTrue(e.getMessage().contains("rebuild native/"), e.getMessage());
    }
  }

  @Test
  void resourcePathsArePerPlatformAndCudaMajor() {
    String p = NativeLoader.resourcePath(13, NativeLoader.KERNELS_FILE);
    assertEquals("/dev/sparktrainer/native/" + NativeLoader.platform() + "/cuda13/sparktrainer_kernels.fatbin", p);
    assertTrue(NativeLoader.platform().matches("[a-z]+-[a-z0-9_]+"), NativeLoader.platform());
  }

  @Test
  void theJarCarriesTheFatbinWhenNvccWasThere() throws Exception {
    boolean nvcc = Files.isExecutable(Path.of("/usr/local/cuda/bin/nvcc"));
    try (InputStream in = NativeLoader.class.getResourceAsStream(NativeLoader.resourcePath(13,
        NativeLoader.KERNELS_FILE))) {
      assumeTrue(nvcc || in != null, "nvcc is not installed here, so the build has no fatbin (expected)");
      assertTrue(in != null, "nvcc is installed but the build put no fatbin into the classes folder");
      byte[] head = in.readNBytes(4);
      // fatbin magic 0xBA55ED50, little-endian
      assertEquals(0x50, head[0] & 0xff);
      assertEquals(0xed, head[1] & 0xff);
      assertEquals(0x55, head[2] & 0xff);
      assertEquals(0xba, head[3] & 0xff);
    }
  }

  @Test
  void overrideFolderIsUsedFirst(@TempDir Path dir) throws Exception {
    Files.write(dir.resolve(NativeLoader.KERNELS_FILE), new byte[] {1, 2, 3});
    String old = System.getProperty(NativeLoader.DIR_PROPERTY);
    System.setProperty(NativeLoader.DIR_PROPERTY, dir.toString());
    try {
      assertEquals(3, NativeLoader.kernelImage(13).length);
    } finally {
      restore(old);
    }
  }

  @Test
  void missingKernelsListEveryPlaceTried(@TempDir Path dir) {
    String old = System.getProperty(NativeLoader.DIR_PROPERTY);
    System.setProperty(NativeLoader.DIR_PROPERTY, dir.toString());
    try {
      CudaException e = assertThrows(CudaException.class, () -> NativeLoader.kernelImage(11));
      assertTrue(e.getMessage().contains(dir.toString()), e.getMessage());
      assertTrue(e.getMessage().contains("native/README.md"), e.getMessage());
      assertTrue(e.getMessage().contains("CUDA 13"), e.getMessage());
    } finally {
      restore(old);
    }
  }

  @Test
  void linkErrorsSayWhatToInstall() {
    assertTrue(NativeLoader.explainLinkError("libnccl.so.2: cannot open shared object file: No such file")
        .contains("NCCL"));
    assertTrue(NativeLoader.explainLinkError("libcublasLt.so.13: cannot open shared object file").contains("cuBLAS"));
    assertTrue(NativeLoader.explainLinkError("libcuda.so.1: cannot open shared object file").contains("driver"));
    assertTrue(NativeLoader.explainLinkError("something else").contains("ldd"));
  }

  @Test
  void cpuOnlyMachinesReportWhyCudaIsUnavailable() {
    Cuda.Availability a = Cuda.availability();
    assertTrue(a.available() || !a.reason().isBlank(), "an unavailable CUDA must say why");
    String report = NativeLoader.diagnose();
    assertTrue(report.contains("platform: ") && report.contains("CUDA driver: "), report);
  }

  private static void restore(String old) {
    if (old == null) {
      System.clearProperty(NativeLoader.DIR_PROPERTY);
    } else {
      System.setProperty(NativeLoader.DIR_PROPERTY, old);
    }
  }
}
