package dev.sparktrainer.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.cuda.Cuda;
import dev.sparktrainer.cuda.NativeLoader;
import java.io.IOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * What {@link Doctor} looks at on one machine (the driver, or an executor through a tiny Spark job): Java,
 * Spark and Scala versions, the NVIDIA driver and GPUs (through JCuda), the CUDA runtime, cuDNN and NCCL
 * versions (from the project's JNI library when it loads, else from the library files on disk), the JCuda
 * binding, and whether this jar has CUDA kernels for the driver. {@link #probe()} reads them; tests build
 * fakes.
 *
 * @param cudaDriverVersion CUDA version the driver supports, e.g. 13000 for 13.0; 0 when no driver loads
 * @param cudaProblem why CUDA is unusable (no driver, no device); null when usable
 * @param cudaRuntime e.g. "13.0"; null when not found
 * @param cudnn e.g. "9.14.0"; null when not found
 * @param nccl e.g. "2.28.3"; null when not found
 * @param librarySource where the library versions came from ("JNI library" or "library files")
 * @param jniProblem why the project's JNI library did not load; null when it did
 * @param kernels whether this jar (or the override folder) has CUDA kernels for the driver's CUDA major
 * @param taskGpus the GPU addresses Spark gave the probing task ("" none), null on the driver
 */
public record DoctorFacts(String host, String executorId, String javaVersion, String javaVendor,
    String sparkVersion, String scalaVersion, String jcudaVersion, int cudaDriverVersion, String cudaProblem,
    List<String> gpus, String cudaVisibleDevices, String cudaRuntime, String cudnn, String nccl,
    String librarySource, String jniProblem, boolean kernels, String taskGpus) implements Serializable {

  private static final ObjectMapper JSON = new ObjectMapper();

  /** The facts of this JVM and host; never throws for a missing GPU stack. */
  public static DoctorFacts probe() {
    String host;
    try {
      host = InetAddress.getLocalHost().getHostName();
    } catch (IOException e) {
      host = "unknown host";
    }
    String spark = org.apache.spark.package$.MODULE$.SPARK_VERSION();
    String scalaVersion = scala.util.Properties$.MODULE$.versionNumberString();
    String jcudaVersion;
    try {
      jcudaVersion = jcuda.JCudaVersion.get();
    } catch (LinkageError e) {
      jcudaVersion = null;
    }
    Cuda.Availability a = Cuda.availability();
    List<String> gpus = new ArrayList<>();
    if (a.available()) {
      for (int d = 0; d < a.deviceCount(); d++) {
        try {
          gpus.add(Cuda.deviceName(d));
        } catch (RuntimeException e) {
          gpus.add("device " + d + " (name unavailable: " + e.getMessage() + ")");
        }
      }
    }
    String jniProblem = NativeLoader.jniProblem();
    String runtime = null;
    String cudnn = null;
    String nccl = null;
    String source = "library files";
    if (jniProblem == null) {
      String[] v = fromDiagnose(NativeLoader.diagnose());
      runtime = v[0];
      cudnn = v[1];
      nccl = v[2];
      source = "JNI library";
    }
    List<Path> dirs = libraryDirs();
    if (runtime == null) {
      runtime = versionOnDisk(dirs, "libcudart.so");
    }
    if (cudnn == null) {
      cudnn = versionOnDisk(dirs, "libcudnn.so");
    }
    if (nccl == null) {
      nccl = versionOnDisk(dirs, "libnccl.so");
    }
    boolean kernels = false;
    if (a.driverVersion() > 0) {
      String p = System.getProperty(NativeLoader.DIR_PROPERTY, System.getenv(NativeLoader.DIR_ENV));
      kernels = NativeLoader.class.getResource(NativeLoader.resourcePath(a.driverVersion() / 1000,
          NativeLoader.KERNELS_FILE)) != null
          || (p != null && Files.isRegularFile(Paths.get(p).resolve(NativeLoader.KERNELS_FILE)))
          || System.getProperty(NativeLoader.KERNELS_PROPERTY) != null;
    }
    return new DoctorFacts(host, "driver", System.getProperty("java.version"), System.getProperty("java.vendor"),
        spark, scalaVersion, jcudaVersion, a.driverVersion(), a.available() ? null : a.reason(), List.copyOf(gpus),
        System.getenv("CUDA_VISIBLE_DEVICES"), runtime, cudnn, nccl, source, jniProblem, kernels, null);
  }

  /** The same facts as seen by a Spark task: executor id and the task's GPU addresses filled in. */
  public DoctorFacts onExecutor(String id, String taskGpuAddresses) {
    return new DoctorFacts(host, id, javaVersion, javaVendor, sparkVersion, scalaVersion, jcudaVersion,
        cudaDriverVersion, cudaProblem, gpus, cudaVisibleDevices, cudaRuntime, cudnn, nccl, librarySource, jniProblem,
        kernels, taskGpuAddresses);
  }

  /** {runtime "13.0", cuDNN "9.14.0", NCCL "2.28.3"} from NativeLoader.diagnose(); nulls where absent. */
  static String[] fromDiagnose(String text) {
    String[] out = new String[3];
    Matcher m = Pattern.compile("NCCL (\\d+\\.\\d+\\.\\d+), cuBLASLt \\d+, CUDA runtime (\\d+), cuDNN (\\d+)?")
        .matcher(text);
    if (m.find()) {
      out[2] = m.group(1);
      int rt = Integer.parseInt(m.group(2));
      out[0] = rt / 1000 + "." + rt % 1000 / 10;
      if (m.group(3) != null) {
        int c = Integer.parseInt(m.group(3));
        out[1] = c / 10000 + "." + c % 10000 / 100 + "." + c % 100;
      }
    }
    return out;
  }

  /** Folders the dynamic linker would search for CUDA libraries (LD_LIBRARY_PATH, CUDA's, the system's). */
  static List<Path> libraryDirs() {
    Set<String> dirs = new LinkedHashSet<>();
    String ld = System.getenv("LD_LIBRARY_PATH");
    if (ld != null) {
      for (String d : ld.split(":")) {
        if (!d.isBlank()) {
          dirs.add(d);
        }
      }
    }
    String cudaHome = System.getenv("CUDA_HOME");
    if (cudaHome != null) {
      dirs.add(cudaHome + "/lib64");
    }
    dirs.add("/usr/local/cuda/lib64");
    dirs.add("/usr/local/cuda/targets/x86_64-linux/lib");
    dirs.add("/usr/local/cuda/targets/sbsa-linux/lib");
    dirs.add("/usr/lib/x86_64-linux-gnu");
    dirs.add("/usr/lib/aarch64-linux-gnu");
    dirs.add("/usr/lib64");
    dirs.add("/usr/lib");
    List<Path> out = new ArrayList<>();
    for (String d : dirs) {
      out.add(Paths.get(d));
    }
    return out;
  }

  /**
   * The version in the name of the first {@code base}.N[.N[.N]] file (following links) in {@code dirs}, e.g.
   * "13.0.96" for libcudart.so.13 -> libcudart.so.13.0.96, or "13" when only the major is in the name.
   */
  static String versionOnDisk(List<Path> dirs, String base) {
    Pattern p = Pattern.compile(Pattern.quote(base) + "\\.(\\d+(?:\\.\\d+){0,2})");
    for (Path d : dirs) {
      if (!Files.isDirectory(d)) {
        continue;
      }
      try (Stream<Path> files = Files.list(d)) {
        String best = null;
        for (Path f : (Iterable<Path>) files::iterator) {
          String name = f.getFileName().toString();
          if (!name.startsWith(base + ".")) {
            continue;
          }
          String real = name;
          try {
            real = f.toRealPath().getFileName().toString();
          } catch (IOException ignored) {
            // a dangling link: use its own name
          }
          for (String n : new String[] {real, name}) {
            Matcher m = p.matcher(n);
            if (m.matches() && (best == null || m.group(1).length() > best.length())) {
              best = m.group(1);
            }
          }
        }
        if (best != null) {
          return best;
        }
      } catch (IOException | UncheckedIOException e) {
        // unreadable folder: try the next
      }
    }
    return null;
  }

  /** As JSON (to bring executors' facts back as plain strings). */
  public String toJson() {
    ObjectNode o = JSON.valueToTree(this);
    try {
      return JSON.writeValueAsString(o);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  public static DoctorFacts fromJson(String json) {
    try {
      JsonNode n = JSON.readTree(json);
      List<String> gpus = new ArrayList<>();
      n.path("gpus").forEach(g -> gpus.add(g.asText()));
      return new DoctorFacts(text(n, "host"), text(n, "executorId"), text(n, "javaVersion"), text(n, "javaVendor"),
          text(n, "sparkVersion"), text(n, "scalaVersion"), text(n, "jcudaVersion"), n.path("cudaDriverVersion").asInt(),
          text(n, "cudaProblem"), List.copyOf(gpus), text(n, "cudaVisibleDevices"), text(n, "cudaRuntime"),
          text(n, "cudnn"), text(n, "nccl"), text(n, "librarySource"), text(n, "jniProblem"),
          n.path("kernels").asBoolean(), text(n, "taskGpus"));
    } catch (IOException e) {
      throw new IllegalArgumentException("doctor: bad facts JSON: " + e.getMessage(), e);
    }
  }

  private static String text(JsonNode n, String key) {
    JsonNode v = n.get(key);
    return v == null || v.isNull() ? null : v.asText();
  }
}
