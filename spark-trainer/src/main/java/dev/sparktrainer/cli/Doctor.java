package dev.sparktrainer.cli;

import java.io.PrintStream;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * {@code spark-trainer doctor}: checks that this machine (and, given {@code --master URL}, the executors)
 * can run spark-trainer: Java, Spark/Scala, the NVIDIA driver, the GPUs, the CUDA runtime, cuDNN, NCCL,
 * JCuda, the project's native library and kernels; says which combinations are supported and prints the fix
 * for each mismatch.
 *
 * <pre>
 * java -cp ... dev.sparktrainer.cli.Doctor [--master URL] [--gpu] [--tasks N]
 * spark-submit --class dev.sparktrainer.cli.Doctor spark-trainer.jar --master yarn --gpu
 * </pre>
 * {@code --gpu}: GPU training is required, so a missing GPU stack fails (exit 1); without it, a machine
 * without GPUs passes with "no GPU" (training runs on the CPU). Exit status 1 when any check fails, else 0.
 */
public final class Doctor {
  // ---- the support matrix (keep in step with the pom, docker/Dockerfile and docs/troubleshooting.md) ----
  static final int[] JAVA_MAJORS = {17, 21};
  static final String[] SPARK_LINES = {"4.0", "4.1"};
  static final String SPARK_BUILT = "4.1.0";
  static final String SCALA_LINE = "2.13";
  static final int CUDA_MAJOR = 13;
  static final String DRIVER_MIN = "R580";
  static final int CUDNN_MAJOR = 9;
  static final int[] NCCL_MIN = {2, 18};
  static final String JCUDA_BUILT = "12.6.0";

  /** Outcome of one check. SKIP: not needed in this mode (a GPU part on a CPU-only machine). */
  public enum Status { OK, WARN, FAIL, SKIP }

  /** One line of the report: what was checked, what was found, and the fix when it is not OK. */
  public record Check(String name, Status status, String found, String fix) {}

  private Doctor() {}

  public static void main(String[] args) {
    System.exit(run(args, System.out));
  }

  /** Runs the doctor; returns the exit status (0 fine, 1 a check failed, 2 bad arguments). */
  public static int run(String[] args, PrintStream out) {
    String master = null;
    boolean gpu = false;
    int tasks = 0;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--master" -> master = i + 1 < args.length ? args[++i] : null;
        case "--gpu" -> gpu = true;
        case "--tasks" -> tasks = i + 1 < args.length ? Integer.parseInt(args[++i]) : 0;
        case "-h", "--help" -> {
          out.println("usage: spark-trainer doctor [--master URL] [--gpu] [--tasks N]\n"
              + "  --master URL  also check what executors see (a tiny Spark job of N tasks)\n"
              + "  --gpu         GPU training is required: a missing GPU stack is a failure\n"
              + "  --tasks N     tasks of the executor check (default: the default parallelism)");
          return 0;
        }
        default -> {
          out.println("doctor: unknown option " + args[i] + " (known: --master URL, --gpu, --tasks N, --help)");
          return 2;
        }
      }
    }
    out.println("spark-trainer doctor: built against Spark " + SPARK_BUILT + " (Scala " + SCALA_LINE + "), CUDA "
        + CUDA_MAJOR + ", JCuda " + JCUDA_BUILT);
    DoctorFacts driver = DoctorFacts.probe();
    List<Check> checks = checks(driver, gpu);
    out.println();
    out.println("driver (" + driver.host() + "):");
    print(checks, out);
    boolean failed = failed(checks);
    if (master != null || DoctorExecutors.activeSessionIsCluster()) {
      List<DoctorFacts> executors;
      try {
        executors = DoctorExecutors.probe(master, tasks);
      } catch (RuntimeException e) {
        out.println();
        out.println("executors: the check job failed: " + e);
        out.println("  fix: check the master URL and that executors start (spark-submit --master " + master
            + " with the same options as the training job)");
        return 1;
      }
      for (DoctorFacts ex : executors) {
        List<Check> c = new ArrayList<>(checks(ex, gpu));
        c.addAll(consistency(driver, ex));
        out.println();
        out.println("executor " + ex.executorId() + " (" + ex.host() + ")"
            + (ex.taskGpus() == null ? "" : ", task GPUs: " + (ex.taskGpus().isEmpty() ? "none" : ex.taskGpus()))
            + ":");
        print(c, out);
        failed |= failed(c);
      }
    }
    out.println();
    out.println(supportMatrix());
    out.println();
    out.println(verdict(driver, checks, gpu, failed));
    return failed ? 1 : 0;
  }

  static boolean failed(List<Check> checks) {
    return checks.stream().anyMatch(c -> c.status() == Status.FAIL);
  }

  static void print(List<Check> checks, PrintStream out) {
    for (Check c : checks) {
      out.printf(Locale.ROOT, "  [%-4s] %-15s %s%n", c.status(), c.name(), c.found());
      if (c.fix() != null) {
        out.println("         fix: " + c.fix());
      }
    }
  }

  /** The supported combinations, as printed. */
  static String supportMatrix() {
    return "supported: Java 17 or 21 | Spark 4.0.x or 4.1.x for Scala 2.13 (this jar: " + SPARK_BUILT + ")\n"
        + "  GPU: NVIDIA driver " + DRIVER_MIN + "+ (CUDA " + CUDA_MAJOR + ".x) | CUDA runtime " + CUDA_MAJOR
        + ".x | cuDNN " + CUDNN_MAJOR + ".x for CUDA " + CUDA_MAJOR + " | NCCL " + NCCL_MIN[0] + "." + NCCL_MIN[1]
        + "+ for CUDA " + CUDA_MAJOR + " | JCuda " + JCUDA_BUILT + " (driver API) | compute capability 8.0+\n"
        + "  tested: Java 17, Spark 4.1.0, driver 580.159 (CUDA 13.0), CUDA runtime 13.0, cuDNN 9.14, NCCL 2.28.3 "
        + "on H100 and H200; the image docker/Dockerfile pins this set";
  }

  static String verdict(DoctorFacts f, List<Check> checks, boolean gpuRequired, boolean failed) {
    boolean base = checks.stream().filter(c -> c.name().equals("Java") || c.name().equals("Spark"))
        .noneMatch(c -> c.status() == Status.FAIL);
    boolean gpuOk = f.cudaProblem() == null && checks.stream().filter(c -> isGpuCheck(c.name()))
        .noneMatch(c -> c.status() == Status.FAIL || c.status() == Status.SKIP);
    String cpu = base ? "CPU training: ready" : "CPU training: NOT ready (fix Java/Spark above)";
    String gpu = gpuOk ? "GPU training: ready on " + f.gpus().size() + " GPU(s)"
        : f.cudaProblem() != null ? "GPU training: not available here (no GPU: " + (f.cudaDriverVersion() == 0
            && !noDevice(f) ? "NVIDIA driver not found" : "the driver sees no GPU") + ")"
        : "GPU training: NOT ready (see the fixes above)";
    return "verdict: " + cpu + "; " + gpu + (failed ? " -> exit 1" : "")
        + (gpuRequired || gpuOk ? "" : " (use --gpu when GPUs are required)");
  }

  static boolean isGpuCheck(String name) {
    return !name.equals("Java") && !name.equals("Spark");
  }

  /**
   * The checks of one machine. GPU checks are SKIP without a GPU unless {@code gpuRequired}; then they fail.
   */
  public static List<Check> checks(DoctorFacts f, boolean gpuRequired) {
    List<Check> out = new ArrayList<>();
    out.add(java(f));
    out.add(spark(f));
    Status missing = gpuRequired ? Status.FAIL : Status.SKIP;
    // The driver and the GPUs.
    if (noDevice(f)) {
      // The driver loaded but cuInit found no device (CUDA_VISIBLE_DEVICES, a container without --gpus).
      out.add(new Check("NVIDIA driver", Status.OK, "loaded (version unknown: cuInit found no device)", null));
      out.add(noGpus(f, missing));
      return gpuLibraries(f, out, missing, false);
    }
    if (f.cudaDriverVersion() == 0) {
      out.add(new Check("NVIDIA driver", missing, "not found (" + f.cudaProblem() + ")",
          gpuRequired ? "install the NVIDIA driver " + DRIVER_MIN + " or newer (CUDA " + CUDA_MAJOR + "); `nvidia-smi` "
              + "must list the GPUs. In a container: run it with the NVIDIA container toolkit (--gpus all)"
              : "no GPU: training runs on the CPU (device auto -> cpu). To train on GPUs, install the NVIDIA "
              + "driver " + DRIVER_MIN + " or newer (CUDA " + CUDA_MAJOR + ")"));
      return gpuLibraries(f, out, missing, false);
    }
    String driver = "CUDA " + cuda(f.cudaDriverVersion());
    int major = f.cudaDriverVersion() / 1000;
    if (major < CUDA_MAJOR && !f.kernels()) {
      out.add(new Check("NVIDIA driver", Status.FAIL, driver + " (too old)", "this build's kernels need a driver "
          + "for CUDA " + CUDA_MAJOR + ": upgrade the NVIDIA driver to " + DRIVER_MIN + " or newer (`nvidia-smi` shows "
          + "\"CUDA Version: " + CUDA_MAJOR + ".x\"), or rebuild native/ with the CUDA " + major + " toolkit"));
    } else {
      out.add(new Check("NVIDIA driver", Status.OK, driver, null));
    }
    if (f.gpus().isEmpty()) {
      out.add(noGpus(f, missing));
    } else {
      out.add(new Check("GPUs", Status.OK, f.gpus().size() + ": " + String.join(", ", f.gpus()), null));
    }
    if (f.taskGpus() != null && f.taskGpus().isEmpty() && !f.gpus().isEmpty()) {
      out.add(new Check("task GPUs", Status.WARN, "the executor has GPUs but Spark gave this task none",
          "set spark.executor.resource.gpu.amount, spark.task.resource.gpu.amount=1 and "
              + "spark.executor.resource.gpu.discoveryScript (conf/ has a template); local mode never assigns GPUs"));
    }
    return gpuLibraries(f, out, missing, true);
  }

  /** cuInit reported "no device": the driver is there, the GPUs are not visible to this process. */
  static boolean noDevice(DoctorFacts f) {
    return f.cudaDriverVersion() == 0 && f.cudaProblem() != null && f.cudaProblem().contains("CUDA_ERROR_NO_DEVICE");
  }

  private static Check noGpus(DoctorFacts f, Status missing) {
    String vis = f.cudaVisibleDevices() == null ? "" : " (CUDA_VISIBLE_DEVICES=" + f.cudaVisibleDevices() + ")";
    return new Check("GPUs", missing, "none visible" + vis, "the driver sees no GPU: check `nvidia-smi`; "
        + "unset CUDA_VISIBLE_DEVICES or list the GPUs in it; in a container run with --gpus all");
  }

  private static List<Check> gpuLibraries(DoctorFacts f, List<Check> out, Status missing, boolean hasDriver) {
    // CUDA runtime
    if (f.cudaRuntime() == null) {
      out.add(new Check("CUDA runtime", missing, "not found", "install the CUDA " + CUDA_MAJOR + " runtime "
          + "(libcudart.so." + CUDA_MAJOR + ", e.g. the cuda-cudart-" + CUDA_MAJOR + "-0 package) or add its lib folder "
          + "to LD_LIBRARY_PATH"));
    } else if (major(f.cudaRuntime()) != CUDA_MAJOR) {
      out.add(new Check("CUDA runtime", hasDriver ? Status.FAIL : missing, f.cudaRuntime() + " (" + f.librarySource()
          + ")", "this build needs the CUDA " + CUDA_MAJOR + " runtime; install CUDA " + CUDA_MAJOR
          + ".x and put it first on LD_LIBRARY_PATH"));
    } else {
      out.add(new Check("CUDA runtime", Status.OK, f.cudaRuntime() + " (" + f.librarySource() + ")", null));
    }
    // cuDNN (only convolutions need it)
    if (f.cudnn() == null) {
      out.add(new Check("cuDNN", hasDriver ? Status.WARN : Status.SKIP, "not found", "only convolutional models need "
          + "it: install cuDNN " + CUDNN_MAJOR + " for CUDA " + CUDA_MAJOR + " (package libcudnn" + CUDNN_MAJOR + "-cuda-"
          + CUDA_MAJOR + ")"));
    } else if (major(f.cudnn()) != CUDNN_MAJOR) {
      out.add(new Check("cuDNN", hasDriver ? Status.FAIL : missing, f.cudnn(), "install cuDNN " + CUDNN_MAJOR + " for "
          + "CUDA " + CUDA_MAJOR + " (libcudnn" + CUDNN_MAJOR + "-cuda-" + CUDA_MAJOR + "); cuDNN " + major(f.cudnn())
          + " is not supported"));
    } else {
      out.add(new Check("cuDNN", Status.OK, f.cudnn(), null));
    }
    // NCCL
    if (f.nccl() == null) {
      out.add(new Check("NCCL", missing, "not found", "install NCCL " + NCCL_MIN[0] + "." + NCCL_MIN[1] + "+ built "
          + "for CUDA " + CUDA_MAJOR + " (package libnccl2) or add its lib folder to LD_LIBRARY_PATH"));
    } else if (!atLeast(f.nccl(), NCCL_MIN)) {
      out.add(new Check("NCCL", hasDriver ? Status.FAIL : missing, f.nccl(), "NCCL " + f.nccl() + " is too old: "
          + "install NCCL " + NCCL_MIN[0] + "." + NCCL_MIN[1] + "+ built for CUDA " + CUDA_MAJOR));
    } else {
      out.add(new Check("NCCL", Status.OK, f.nccl(), null));
    }
    // JCuda binding
    if (f.jcudaVersion() == null) {
      out.add(new Check("JCuda", Status.FAIL, "not on the classpath", "use the spark-trainer jar with its "
          + "dependencies (org.jcuda:jcuda:" + JCUDA_BUILT + " and jcuda-natives for this platform)"));
    } else if (!f.jcudaVersion().equals(JCUDA_BUILT)) {
      out.add(new Check("JCuda", Status.WARN, f.jcudaVersion(), "this build is tested with JCuda " + JCUDA_BUILT
          + "; another JCuda on the classpath (e.g. from --jars) may not match: remove it"));
    } else {
      out.add(new Check("JCuda", Status.OK, f.jcudaVersion() + " (driver API)", null));
    }
    // the project's own native parts
    if (!hasDriver) {
      out.add(new Check("native library", missing, f.jniProblem() == null ? "loaded" : "not checked without a driver",
          f.jniProblem() == null ? null : "build native/ on a GPU machine (native/README.md) and pass "
              + "-Dsparktrainer.native.dir=<folder>"));
      return out;
    }
    if (f.jniProblem() != null) {
      out.add(new Check("native library", Status.FAIL, "not loaded", f.jniProblem()));
    } else {
      out.add(new Check("native library", Status.OK, "loaded", null));
    }
    if (!f.kernels()) {
      out.add(new Check("kernels", Status.FAIL, "none for CUDA " + f.cudaDriverVersion() / 1000 + " in this jar",
          "use a jar built where nvcc " + CUDA_MAJOR + " is installed, or build native/ and set "
              + "-Dsparktrainer.native.dir=<folder with sparktrainer_kernels.fatbin>"));
    } else {
      out.add(new Check("kernels", Status.OK, "found for CUDA " + f.cudaDriverVersion() / 1000, null));
    }
    return out;
  }

  static Check java(DoctorFacts f) {
    int major = major(f.javaVersion());
    for (int m : JAVA_MAJORS) {
      if (m == major) {
        return new Check("Java", Status.OK, f.javaVersion() + " (" + f.javaVendor() + ")", null);
      }
    }
    return new Check("Java", Status.FAIL, f.javaVersion() + " (" + f.javaVendor() + ")", "Spark 4 and this "
        + "project run on Java 17 or 21: install JDK 17 and set JAVA_HOME (and spark.executorEnv.JAVA_HOME on clusters)");
  }

  static Check spark(DoctorFacts f) {
    String found = f.sparkVersion() + ", Scala " + f.scalaVersion();
    boolean scalaOk = f.scalaVersion() != null && f.scalaVersion().startsWith(SCALA_LINE + ".");
    if (!scalaOk) {
      return new Check("Spark", Status.FAIL, found, "this jar is built for Scala " + SCALA_LINE + ": use a Spark "
          + "distribution for Scala " + SCALA_LINE + " (the default of Spark 4)");
    }
    for (String line : SPARK_LINES) {
      if (f.sparkVersion() != null && f.sparkVersion().startsWith(line + ".")) {
        return new Check("Spark", Status.OK, found, null);
      }
    }
    return new Check("Spark", Status.FAIL, found, "use Spark 4.1.x (this jar is built against " + SPARK_BUILT
        + "; 4.0.x also works); Spark 3.x is not supported");
  }

  /** Driver vs one executor: versions that must agree. */
  static List<Check> consistency(DoctorFacts driver, DoctorFacts ex) {
    List<Check> out = new ArrayList<>();
    Map<String, String[]> pairs = new LinkedHashMap<>();
    pairs.put("Spark version", new String[] {driver.sparkVersion(), ex.sparkVersion()});
    pairs.put("Java major", new String[] {String.valueOf(major(driver.javaVersion())),
        String.valueOf(major(ex.javaVersion()))});
    for (Map.Entry<String, String[]> e : pairs.entrySet()) {
      String a = e.getValue()[0];
      String b = e.getValue()[1];
      if (a != null && !a.equals(b)) {
        out.add(new Check("same as driver", Status.FAIL, e.getKey() + " " + b + " on the executor, " + a
            + " on the driver", "run the driver and the executors on the same Spark and Java (spark.executorEnv."
            + "JAVA_HOME, the cluster's SPARK_HOME, or the image docker/Dockerfile for both)"));
      }
    }
    return out;
  }

  /** "13.0" for 13000. */
  static String cuda(int v) {
    return v / 1000 + "." + v % 1000 / 10;
  }

  /** Leading number of a version string ("17.0.15" -> 17, "1.8.0" -> 8), -1 when there is none. */
  static int major(String v) {
    if (v == null) {
      return -1;
    }
    String[] p = v.split("[.+-]");
    try {
      int m = Integer.parseInt(p[0]);
      return m == 1 && p.length > 1 ? Integer.parseInt(p[1]) : m;
    } catch (NumberFormatException e) {
      return -1;
    }
  }

  static boolean atLeast(String v, int[] min) {
    String[] p = v.split("\\.");
    for (int i = 0; i < min.length; i++) {
      int x;
      try {
        x = i < p.length ? Integer.parseInt(p[i]) : 0;
      } catch (NumberFormatException e) {
        return false;
      }
      if (x != min[i]) {
        return x > min[i];
      }
    }
    return true;
  }
}
