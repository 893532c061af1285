package dev.sparktrainer.bench.cluster;

import dev.sparktrainer.cuda.Cuda;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.apache.spark.SparkEnv;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;

/**
 * What the benchmark ran on, found by a small Spark job (one plain task per slot) in which every task reports
 * its executor: host, cores the JVM sees, CPU model and, when GPUs were asked for, the CUDA devices' names.
 *
 * @param master the session's master URL
 * @param sparkVersion the cluster's Spark version
 * @param executors executors that ran a probe task
 * @param coresPerExecutor the largest core count an executor JVM reported
 * @param taskSlots the session's default parallelism
 * @param cpuModel the CPU model of the first executor ("" when unknown)
 * @param gpus the distinct GPU names the executors see (empty when none or not probed)
 * @param gpusPerExecutor the largest GPU count an executor reported
 * @param databricks whether the session runs on Databricks (it sets spark.databricks.clusterUsageTags.*)
 */
public record ClusterInfo(String master, String sparkVersion, int executors, int coresPerExecutor, int taskSlots,
    String cpuModel, List<String> gpus, int gpusPerExecutor, boolean databricks) {

  public ClusterInfo {
    gpus = List.copyOf(gpus);
  }

  /** Runs the probe job; {@code probeGpus} = false never touches CUDA (device cpu). */
  public static ClusterInfo probe(SparkSession spark, boolean probeGpus) {
    JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
    int n = Math.max(1, sc.defaultParallelism());
    sc.setJobDescription("spark-trainer cluster bench: what the executors have");
    List<String> lines = sc.parallelize(IntStream.range(0, n).boxed().collect(Collectors.toList()), n)
        .map(i -> probeTask(probeGpus)).collect();
    sc.setJobDescription(null);
    Map<String, String[]> byExecutor = new LinkedHashMap<>();
    for (String l : lines) {
      String[] f = l.split("\t", -1);
      byExecutor.putIfAbsent(f[0] + "@" + f[1], f);
    }
    int cores = 0;
    int gpuCount = 0;
    String cpu = "";
    Set<String> gpus = new LinkedHashSet<>();
    for (String[] f : byExecutor.values()) {
      cores = Math.max(cores, Integer.parseInt(f[2]));
      if (cpu.isEmpty()) {
        cpu = f[3];
      }
      List<String> names = f[4].isEmpty() ? List.of() : List.of(f[4].split(";"));
      gpuCount = Math.max(gpuCount, names.size());
      gpus.addAll(names);
    }
    boolean databricks = spark.conf().getOption("spark.databricks.clusterUsageTags.clusterName").isDefined();
    return new ClusterInfo(spark.sparkContext().master(), spark.version(), byExecutor.size(), cores, n, cpu,
        new ArrayList<>(gpus), gpuCount, databricks);
  }

  /** Inside a task: executor id, host, cores, CPU model, GPU names (';'-separated), tab-separated. */
  static String probeTask(boolean probeGpus) {
    String id = SparkEnv.get() == null ? "driver" : SparkEnv.get().executorId();
    String host;
    try {
      host = InetAddress.getLocalHost().getHostName();
    } catch (IOException e) {
      host = "unknown";
    }
    List<String> gpus = new ArrayList<>();
    if (probeGpus) {
      try {
        Cuda.Availability a = Cuda.availability();
        for (int d = 0; a.available() && d < a.deviceCount(); d++) {
          gpus.add(Cuda.deviceName(d).replace(';', ',').replace('\t', ' '));
        }
      } catch (RuntimeException | LinkageError e) {
        gpus.clear(); // no usable GPU: the report says cpu
      }
    }
    return String.join("\t", id, host, String.valueOf(Runtime.getRuntime().availableProcessors()), readCpuModel(),
        String.join(";", gpus));
  }

  /** The "model name" line of /proc/cpuinfo, or os.arch where there is none. */
  static String readCpuModel() {
    try {
      for (String l : Files.readAllLines(Path.of("/proc/cpuinfo"), StandardCharsets.UTF_8)) {
        if (l.startsWith("model name")) {
          return l.substring(l.indexOf(':') + 1).trim().replace('\t', ' ');
        }
      }
    } catch (IOException | RuntimeException e) {
      // not Linux: fall through
    }
    return System.getProperty("os.arch", "");
  }

  /**
   * The report's "card" for a run whose ranks trained on {@code device} (the summary's, e.g. "cpu" or
   * "cuda:0"): the GPU name on GPUs, else "cpu (N cores)" or "cpu (E x N cores)" for E executors.
   */
  public String card(String device) {
    if (device != null && device.startsWith("cuda") && !gpus.isEmpty()) {
      return String.join(" + ", gpus);
    }
    return executors > 1 ? "cpu (" + executors + " x " + coresPerExecutor + " cores)"
        : "cpu (" + coresPerExecutor + " cores)";
  }

  /**
   * A label for file names: the kind of master and the hardware, e.g. "local2-cpu", "local-cluster2-cpu",
   * "standalone-h100", "yarn-a100", "k8s-cpu", "databricks-a10g".
   */
  public String label(String device) {
    String kind;
    if (databricks) {
      kind = "databricks";
    } else if (master.startsWith("local-cluster")) {
      Matcher m = Pattern.compile("local-cluster\\[(\\d+)").matcher(master);
      kind = m.find() ? "local-cluster" + m.group(1) : "local-cluster";
    } else if (master.startsWith("local")) {
      Matcher m = Pattern.compile("local\\[(\\d+)").matcher(master);
      kind = m.find() ? "local" + m.group(1) : "local";
    } else if (master.startsWith("spark://")) {
      kind = "standalone";
    } else if (master.startsWith("yarn")) {
      kind = "yarn";
    } else if (master.startsWith("k8s://")) {
      kind = "k8s";
    } else {
      kind = "cluster";
    }
    boolean gpu = !"cpu".equals(device) && !gpus.isEmpty();
    return kind + "-" + (gpu ? shortGpuName(gpus.get(0)) : "cpu");
  }

  /** "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA A10G" -> "a10g", "Tesla T4" -> "t4"; else "gpu". */
  static String shortGpuName(String name) {
    Matcher m = Pattern.compile("\\b([A-Z]{1,2}\\d{1,4}[A-Z]?)\\b").matcher(name);
    return m.find() ? m.group(1).toLowerCase(Locale.ROOT) : "gpu";
  }

  /**
   * The commit to record: the given one, else $SPARK_TRAINER_COMMIT, else {@code git rev-parse --short HEAD}
   * in the working folder with "-dirty" when tracked files have changes (read-only git; 5 s at most), else
   * "unknown".
   */
  public static String commit(String given) {
    if (given != null) {
      return given;
    }
    String env = System.getenv("SPARK_TRAINER_COMMIT");
    if (env != null && !env.isBlank()) {
      return env.trim();
    }
    String[] head = git("rev-parse", "--short", "HEAD");
    if (head == null || !head[0].equals("0") || !head[1].matches("[0-9a-f]{4,40}")) {
      return "unknown";
    }
    String[] diff = git("diff", "--quiet", "HEAD", "--"); // exit 1: tracked files differ from HEAD
    return diff != null && diff[0].equals("1") ? head[1] + "-dirty" : head[1];
  }

  /** {exit code, trimmed stdout} of a read-only git command, or null when git is missing or takes over 5 s. */
  private static String[] git(String... args) {
    List<String> cmd = new ArrayList<>();
    cmd.add("git");
    cmd.addAll(List.of(args));
    try {
      Process p = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start();
      try (InputStream in = p.getInputStream()) {
        if (!p.waitFor(5, TimeUnit.SECONDS)) {
          return null;
        }
        String out = new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
        return new String[] {String.valueOf(p.exitValue()), out};
      } finally {
        p.destroy();
      }
    } catch (IOException e) {
      return null; // no git here
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return null;
    }
  }
}
