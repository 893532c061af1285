package dev.sparktrainer.cuda;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * Finds the project's native artifacts and loads them: the kernel fatbin ({@value #KERNELS_FILE}, handed to
 * JCuda's cuModuleLoadData) and the JNI library ({@value #JNI_FILE}, System.load).
 *
 * <p>Search order for each artifact:
 * <ol>
 *   <li>an explicit file: system property {@value #KERNELS_PROPERTY} / {@value #JNI_PROPERTY};
 *   <li>an override folder: system property {@value #DIR_PROPERTY} or environment variable {@value #DIR_ENV}
 *       (e.g. native/build/out after a cmake build);
 *   <li>the jar resource {@code /dev/sparktrainer/native/<platform>/cuda<major>/<file>}, major from the
 *       driver's CUDA version downwards (a fatbin built by CUDA 13 needs a CUDA 13 driver).
 * </ol>
 * When nothing loads, the exception lists every place tried and what to install (driver, CUDA major, NCCL,
 * cuBLAS, cuDNN), xgboost-style.
 */
public final class NativeLoader {
  /** System property: folder holding {@value #KERNELS_FILE} and/or {@value #JNI_FILE}. */
  public static final String DIR_PROPERTY = "sparktrainer.native.dir";
  /** Environment variable with the same meaning as {@value #DIR_PROPERTY}. */
  public static final String DIR_ENV = "SPARKTRAINER_NATIVE_DIR";
  /** System property: the fatbin file itself. */
  public static final String KERNELS_PROPERTY = "sparktrainer.kernels.path";
  /** System property: the JNI library file itself. */
  public static final String JNI_PROPERTY = "sparktrainer.jni.path";
  /** File name of the kernel image. */
  public static final String KERNELS_FILE = "sparktrainer_kernels.fatbin";
  /** File name of the JNI library. */
  public static final String JNI_FILE = "libsparktrainer_jni.so";
  /** Oldest CUDA major version the resources are searched for. */
  static final int MIN_CUDA_MAJOR = 12;

  private static final System.Logger LOG = System.getLogger(NativeLoader.class.getName());
  private static final Object JNI_LOCK = new Object();
  private static boolean jniLoaded;
  private static CudaException jniFailure;
  private static String jniSource;
  private static volatile String kernelSource;

  private NativeLoader() {}

  /** "linux-x86_64", "linux-aarch64", ... from os.name and os.arch. */
  public static String platform() {
    String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
    String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
    String o = os.contains("linux") ? "linux" : os.contains("mac") ? "macos" : os.contains("win") ? "windows" : os;
    String a = switch (arch) {
      case "amd64", "x86_64" -> "x86_64";
      case "aarch64", "arm64" -> "aarch64";
      default -> arch;
    };
    return o + "-" + a;
  }

  /** The jar resource path of {@code file} for a CUDA major version. */
  public static String resourcePath(int cudaMajor, String file) {
    return "/dev/sparktrainer/native/" + platform() + "/cuda" + cudaMajor + "/" + file;
  }

  private static Path overrideDir() {
    String d = System.getProperty(DIR_PROPERTY);
    if (d == null || d.isBlank()) {
      d = System.getenv(DIR_ENV);
    }
    return d == null || d.isBlank() ? null : Paths.get(d);
  }

  /**
   * The fatbin's bytes for a driver supporting CUDA {@code driverMajor}. Throws a {@link CudaException}
   * listing what was tried when none is found.
   */
  static byte[] kernelImage(int driverMajor) {
    List<String> tried = new ArrayList<>();
    String explicit = System.getProperty(KERNELS_PROPERTY);
    try {
      if (explicit != null && !explicit.isBlank()) {
        Path p = Paths.get(explicit);
        if (Files.isRegularFile(p)) {
          kernelSource = p.toString();
          return Files.readAllBytes(p);
        }
        tried.add(p + " (-D" + KERNELS_PROPERTY + "; missing)");
      }
      Path dir = overrideDir();
      if (dir != null) {
        Path p = dir.resolve(KERNELS_FILE);
        if (Files.isRegularFile(p)) {
          kernelSource = p.toString();
          return Files.readAllBytes(p);
        }
        tried.add(p + " (" + DIR_PROPERTY + "/" + DIR_ENV + "; missing)");
      }
      for (int major = driverMajor; major >= MIN_CUDA_MAJOR; major--) {
        String r = resourcePath(major, KERNELS_FILE);
        try (InputStream in = NativeLoader.class.getResourceAsStream(r)) {
          if (in != null) {
            kernelSource = "classpath:" + r;
            return in.readAllBytes();
          }
        }
        tried.add("classpath:" + r);
      }
    } catch (IOException e) {
      throw new UncheckedIOException("reading the kernel fatbin failed", e);
    }
    throw new CudaException("loader", -1, "the CUDA kernels (" + KERNELS_FILE + ") were not found for "
        + platform() + " and a driver of CUDA " + driverMajor + ". Tried: " + String.join(", ", tried)
        + ". Build them with native/build-kernels.sh or cmake (see native/README.md; the Maven build does it"
        + " when nvcc is installed) and set -D" + DIR_PROPERTY + "=<folder>, or use a jar built with nvcc"
        + (driverMajor < 13 ? "; this driver supports only CUDA " + driverMajor
            + ": the kernels of this build need a driver for CUDA 13 (R580 or newer)" : "") + ".");
  }

  /** True once the JNI library is loaded; tries to load it on the first call. */
  public static boolean jniAvailable() {
    try {
      loadJni();
      return true;
    } catch (CudaException e) {
      return false;
    }
  }

  /** Why the JNI library could not be loaded, or null when it is loaded. */
  public static String jniProblem() {
    try {
      loadJni();
      return null;
    } catch (CudaException e) {
      return e.getMessage();
    }
  }

  /** Where the kernel fatbin was last read from (a file or "classpath:/..."), or null. */
  public static String kernelSource() {
    return kernelSource;
  }

  /** Where the JNI library was loaded from, or null. */
  public static String jniSource() {
    synchronized (JNI_LOCK) {
      return jniSource;
    }
  }

  /**
   * Loads {@value #JNI_FILE} once per JVM (later calls return at once, or rethrow the first failure).
   *
   * @throws CudaException naming the places tried and the missing shared libraries
   */
  static void loadJni() {
    synchronized (JNI_LOCK) {
      if (jniLoaded) {
        return;
      }
      if (jniFailure != null) {
        throw jniFailure;
      }
      List<String> tried = new ArrayList<>();
      try {
        Path file = findJniFile(tried);
        if (file == null) {
          throw new CudaException("loader", -1, "the JNI library " + JNI_FILE + " was not found for "
              + platform() + ". Tried: " + String.join(", ", tried) + ". It is built on a machine with the"
              + " NCCL, cuBLASLt and cuDNN headers: cmake -S native -B native/build && cmake --build"
              + " native/build (see native/README.md), then -D" + DIR_PROPERTY + "=native/build/out.");
        }
        System.load(file.toAbsolutePath().toString());
        jniLoaded = true;
        jniSource = file.toString();
        LOG.log(System.Logger.Level.DEBUG, "loaded {0}", file);
      } catch (UnsatisfiedLinkError e) {
        jniFailure = new CudaException("cannot load " + JNI_FILE + ": " + e.getMessage() + ". "
            + explainLinkError(e.getMessage()), e);
        throw jniFailure;
      } catch (CudaException e) {
        jniFailure = e;
        throw e;
      } catch (IOException e) {
        jniFailure = new CudaException("cannot extract " + JNI_FILE + " from the jar: " + e.getMessage(), e);
        throw jniFailure;
      }
    }
  }

  private static Path findJniFile(List<String> tried) throws IOException {
    String explicit = System.getProperty(JNI_PROPERTY);
    if (explicit != null && !explicit.isBlank()) {
      Path p = Paths.get(explicit);
      if (Files.isRegularFile(p)) {
        return p;
      }
      tried.add(p + " (-D" + JNI_PROPERTY + "; missing)");
    }
    Path dir = overrideDir();
    if (dir != null) {
      Path p = dir.resolve(JNI_FILE);
      if (Files.isRegularFile(p)) {
        return p;
      }
      tried.add(p + " (" + DIR_PROPERTY + "/" + DIR_ENV + "; missing)");
    }
    int driverMajor;
    try {
      driverMajor = Math.max(MIN_CUDA_MAJOR, Cuda.driverVersion() / 1000);
    } catch (RuntimeException | LinkageError e) {
      driverMajor = 13;
    }
    for (int major = driverMajor; major >= MIN_CUDA_MAJOR; major--) {
      String r = resourcePath(major, JNI_FILE);
      try (InputStream in = NativeLoader.class.getResourceAsStream(r)) {
        if (in != null) {
          Path tmp = Files.createTempFile("sparktrainer_jni", ".so");
          tmp.toFile().deleteOnExit();
          Files.copy(in, tmp, StandardCopyOption.REPLACE_EXISTING);
          return tmp;
        }
      }
      tried.add("classpath:" + r);
    }
    return null;
  }

  /** Turns a dynamic-linker message into "what is missing and what to install". */
  static String explainLinkError(String message) {
    String m = message == null ? "" : message;
    List<String> hints = new ArrayList<>();
    if (m.contains("libnccl")) {
      hints.add("NCCL is missing: install NCCL 2.18+ built for CUDA 13 (package libnccl2) or add its lib"
          + " folder to LD_LIBRARY_PATH");
    }
    if (m.contains("libcublasLt") || m.contains("libcublas")) {
      hints.add("cuBLAS/cuBLASLt for CUDA 13 is missing (libcublasLt.so.13: package libcublas-13-0 or the"
          + " CUDA toolkit's lib64 on LD_LIBRARY_PATH); a library built for another CUDA major needs that"
          + " major's cuBLAS");
    }
    if (m.contains("libcudnn")) {
      hints.add("cuDNN 9 is missing (package libcudnn9-cuda-13)");
    }
    if (m.contains("libcuda.so")) {
      hints.add("the NVIDIA driver (libcuda.so.1) is missing: install driver R580+ for CUDA 13");
    }
    if (m.contains("GLIBC") || m.contains("GLIBCXX")) {
      hints.add("the C/C++ runtime is older than the one the library was built with: rebuild native/ on"
          + " this machine (native/README.md)");
    }
    if (m.contains("wrong ELF class") || m.contains("cannot open shared object file: No such file")
        && hints.isEmpty()) {
      hints.add("the library does not match this platform (" + platform() + "): rebuild native/ here");
    }
    if (hints.isEmpty()) {
      hints.add("check `ldd " + JNI_FILE + "` for a 'not found' line; the library needs NCCL 2.18+,"
          + " cuBLASLt 13 and the NVIDIA driver (cuDNN 9 only for convolutions)");
    }
    return String.join("; ", hints) + ".";
  }

  /**
   * A human-readable report for the doctor command and test logs: platform, driver, GPUs, where the kernels
   * and the JNI library come from, and the versions of NCCL, cuBLASLt and cuDNN.
   */
  public static String diagnose() {
    StringBuilder b = new StringBuilder();
    b.append("platform: ").append(platform()).append('\n');
    Cuda.Availability a = Cuda.availability();
    b.append("CUDA driver: ").append(a.available() ? "CUDA " + a.driverVersion() / 1000 + "."
        + a.driverVersion() % 1000 / 10 + ", " + a.deviceCount() + " device(s)" : "unavailable: " + a.reason())
        .append('\n');
    if (a.available()) {
      for (int d = 0; d < a.deviceCount(); d++) {
        b.append("  device ").append(d).append(": ").append(Cuda.deviceName(d)).append('\n');
      }
      try {
        byte[] img = kernelImage(a.driverVersion() / 1000);
        b.append("kernels: ").append(img.length).append(" bytes from ").append(kernelSource).append('\n');
      } catch (CudaException e) {
        b.append("kernels: ").append(e.getMessage()).append('\n');
      }
    }
    String problem = jniProblem();
    if (problem != null) {
      b.append("JNI library: ").append(problem).append('\n');
    } else {
      long[] v = new long[4];
      int st = Native.versions(v);
      b.append("JNI library: ").append(jniSource()).append('\n');
      if (st == 0) {
        b.append("NCCL ").append(v[0] / 10000).append('.').append(v[0] / 100 % 100).append('.')
            .append(v[0] % 100).append(", cuBLASLt ").append(v[1]).append(", CUDA runtime ").append(v[2])
            .append(", cuDNN ").append(v[3] < 0 ? "not available (" + Native.errorString((Native.LIB_JNI << 24) | 2)
                + ")" : String.valueOf(v[3])).append('\n');
      } else {
        b.append("versions: ").append(Native.errorString(st)).append('\n');
      }
    }
    return b.toString();
  }
}
