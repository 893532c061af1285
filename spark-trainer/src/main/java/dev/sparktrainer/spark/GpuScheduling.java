package dev.sparktrainer.spark;

import java.util.Locale;
import java.util.function.Function;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.rdd.RDD;
import org.apache.spark.resource.ResourceProfile;
import org.apache.spark.resource.ResourceProfileBuilder;
import org.apache.spark.resource.ResourceProfileManager;
import org.apache.spark.resource.TaskResourceRequests;
import org.apache.spark.sql.SparkSession;
import scala.Option;

/**
 * How the training stage gets its GPUs from Spark (driver side): which resource profile the barrier stage
 * carries, and whether the cluster has a GPU slot for every one of the W barrier tasks.
 *
 * <p>Note [stage-level scheduling for the training stage]: on a cluster whose executors have GPUs
 * ({@code spark.executor.resource.gpu.amount} set) and a cluster manager that supports task-level resource
 * profiles (standalone, YARN, Kubernetes, all with dynamic allocation off, which barrier mode needs anyway),
 * the training stage carries a task-only {@link ResourceProfile}: 1 GPU and {@value #TASK_CPUS_CONF} CPUs
 * per task. The default profile, which the ETL stages use, keeps its own GPU amount (none, or a fraction such
 * as 0.25 for Spark RAPIDS), so ETL tasks can share a GPU while each training task owns one. Where profiles
 * are not supported the stage falls back to the default profile, with a log line saying so; with a
 * fractional default amount several training tasks could then land on one GPU, which the ranks' duplicate
 * check ({@link GpuPlacement}) turns into an error before NCCL starts. Local mode ({@code local[N]}) hands no
 * GPUs to tasks and refuses task profiles (SPARK-NOTES.md): there the ranks pick GPUs themselves ({@code rank
 * % device count}, {@code dev.sparktrainer.cuda.GpuSelector}).
 *
 * <p>Settings (SparkConf, or the session's runtime conf, read at every fit):
 * <ul>
 *   <li>{@value #PROFILE_CONF}: {@code auto} (default: a task profile for device cuda/auto on GPU executors),
 *       {@code gpu} (a task profile whatever the device, e.g. to give CPU ranks whole GPUs), {@code off}
 *       (always the default profile);
 *   <li>{@value #TASK_CPUS_CONF}: CPUs per training task in the task profile (default
 *       {@code spark.task.cpus}, else 1).
 * </ul>
 */
public final class GpuScheduling {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(GpuScheduling.class);
  /** auto, gpu or off: whether the training stage carries its own task resource profile. */
  public static final String PROFILE_CONF = "spark.sparktrainer.resourceProfile";
  /** CPUs per training task in the task resource profile. */
  public static final String TASK_CPUS_CONF = "spark.sparktrainer.task.cpus";
  static final String EXECUTOR_GPUS = "spark.executor.resource.gpu.amount";
  static final String TASK_GPUS = "spark.task.resource.gpu.amount";
  private static final Pattern LOCAL_CLUSTER = Pattern.compile("local-cluster\\[\\s*(\\d+)\\s*,.*");

  private GpuScheduling() {}

  /** How the training stage takes GPUs. */
  public enum Mode {
    /** It takes none: CPU training, local mode, or executors without GPUs. The CPU slot check applies. */
    NONE,
    /** It carries a task-level resource profile: exactly 1 GPU and {@code taskCpus} CPUs per task. */
    TASK_PROFILE,
    /** It uses the default profile, whose tasks get {@code spark.task.resource.gpu.amount} GPUs each. */
    DEFAULT_PROFILE
  }

  /**
   * What {@link #decide} found, without Spark objects.
   *
   * @param mode how the training stage takes GPUs
   * @param taskCpus CPUs per training task (the task profile's, or spark.task.cpus)
   * @param executorGpus spark.executor.resource.gpu.amount (0 when unset)
   * @param defaultTaskGpus spark.task.resource.gpu.amount of the default profile (0 when unset)
   * @param reason why, in words (logged, and part of the slot check's message)
   * @param fallback true when the stage falls back to the default profile although the executors have GPUs
   */
  public record Decision(Mode mode, int taskCpus, long executorGpus, double defaultTaskGpus, String reason,
      boolean fallback) {}

  /** A decision and, for {@link Mode#TASK_PROFILE}, the registered profile the training stage carries. */
  public record Plan(Decision decision, ResourceProfile profile) {
    public Mode mode() {
      return decision.mode();
    }
  }

  /**
   * The rule itself (no Spark objects, so it can be tested alone).
   *
   * @param master the master URL (spark.master)
   * @param conf looks a setting up; null when unset
   * @param device the trainer's device param: cpu, cuda or auto
   */
  public static Decision decide(String master, Function<String, String> conf, String device) {
    String setting = value(conf, PROFILE_CONF, "auto").trim().toLowerCase(Locale.ROOT);
    if (!setting.equals("auto") && !setting.equals("gpu") && !setting.equals("off")) {
      throw new IllegalArgumentException(PROFILE_CONF + " is '" + setting + "'; use auto, gpu or off");
    }
    long executorGpus = parseLong(conf, EXECUTOR_GPUS, 0);
    double taskGpus = parseDouble(conf, TASK_GPUS, 0);
    int sparkTaskCpus = (int) parseLong(conf, "spark.task.cpus", 1);
    int taskCpus = (int) parseLong(conf, TASK_CPUS_CONF, sparkTaskCpus);
    if (taskCpus < 1) {
      throw new IllegalArgumentException(TASK_CPUS_CONF + " is " + taskCpus + "; a training task needs >= 1 CPU");
    }
    boolean local = master.startsWith("local") && !master.startsWith("local-cluster");
    Mode defaultMode = taskGpus > 0 && !local ? Mode.DEFAULT_PROFILE : Mode.NONE;
    if (setting.equals("auto") && "cpu".equals(device)) {
      return new Decision(Mode.NONE, sparkTaskCpus, executorGpus, taskGpus, "device is cpu", false);
    }
    if (setting.equals("off")) {
      return new Decision(defaultMode, sparkTaskCpus, executorGpus, taskGpus, PROFILE_CONF + " is off", false);
    }
    if (local) {
      return new Decision(Mode.NONE, sparkTaskCpus, executorGpus, taskGpus, "local mode (" + master + ") hands no "
          + "GPUs to tasks and refuses task resource profiles; each rank picks GPU rank % device count", false);
    }
    if (executorGpus <= 0) {
      return new Decision(Mode.NONE, sparkTaskCpus, executorGpus, taskGpus, "the executors have no GPU resources ("
          + EXECUTOR_GPUS + " is not set); each rank picks GPU rank % device count of its host", false);
    }
    boolean dynamic = Boolean.parseBoolean(value(conf, "spark.dynamicAllocation.enabled", "false").trim());
    boolean profileManager = master.startsWith("spark://") || master.startsWith("local-cluster")
        || master.startsWith("yarn") || master.startsWith("k8s://");
    if (dynamic || !profileManager) {
      String why = dynamic ? "dynamic allocation is on (barrier stages need it off; Spark will refuse the stage)"
          : "the cluster manager of master " + master + " does not support task resource profiles";
      return new Decision(defaultMode, sparkTaskCpus, executorGpus, taskGpus, why + "; the training stage uses the "
          + "default profile (" + TASK_GPUS + "=" + fmt(taskGpus) + ")", true);
    }
    return new Decision(Mode.TASK_PROFILE, taskCpus, executorGpus, taskGpus, "task resource profile: 1 GPU and "
        + taskCpus + " CPU(s) per training task; other stages keep the default profile (" + TASK_GPUS + "="
        + fmt(taskGpus) + ")", false);
  }

  /**
   * Decides for this session and, for a task profile, builds it and registers it with Spark (one profile per
   * CPU count, reused by later fits). Logs the decision; a fallback is logged as a warning.
   */
  public static Plan plan(SparkSession session, String device) {
    SparkContext sc = session.sparkContext();
    SparkConf sparkConf = sc.getConf();
    Function<String, String> conf = key -> {
      Option<String> v = session.conf().getOption(key);
      return v.isDefined() ? v.get() : sparkConf.getOption(key).isDefined() ? sparkConf.get(key) : null;
    };
    Decision d = decide(sc.master(), conf, device);
    ResourceProfile profile = null;
    if (d.mode() == Mode.TASK_PROFILE) {
      ResourceProfile built = new ResourceProfileBuilder()
          .require(new TaskResourceRequests().cpus(d.taskCpus()).resource("gpu", 1.0)).build();
      String refused = null;
      try {
        ResourceProfileManager mgr = sc.resourceProfileManager();
        if (mgr.isSupported(built)) {
          Option<ResourceProfile> same = mgr.getEquivalentProfile(built);
          profile = same.isDefined() ? same.get() : built;
          mgr.addResourceProfile(profile);
        } else {
          refused = "Spark does not support it here";
        }
      } catch (RuntimeException e) {
        refused = e.getMessage();
      }
      if (refused != null) {
        Mode fallback = d.defaultTaskGpus() > 0 ? Mode.DEFAULT_PROFILE : Mode.NONE;
        d = new Decision(fallback, sparkConf.getInt("spark.task.cpus", 1), d.executorGpus(),
            d.defaultTaskGpus(), "Spark refused the task resource profile (" + refused + "); the training stage "
            + "uses the default profile (" + TASK_GPUS + "=" + fmt(d.defaultTaskGpus()) + ")", true);
      }
    }
    if (d.fallback()) {
      String then = d.mode() == Mode.NONE ? "; tasks get no GPUs from Spark, so each rank picks GPU rank % device "
          + "count of its host" : d.defaultTaskGpus() == 1.0 ? "" : "; training tasks then get "
          + fmt(d.defaultTaskGpus()) + " GPU(s) each, and ranks that share a GPU fail before NCCL starts";
      LOG.warn("training stage GPUs: " + d.reason() + then);
    } else {
      LOG.info("training stage GPUs: " + d.mode() + ", " + d.reason());
    }
    return new Plan(d, profile);
  }

  /** {@code rdd} with the plan's task profile attached (the same RDD when there is none). */
  public static <T> RDD<T> withProfile(RDD<T> rdd, Plan plan) {
    return plan.profile() == null ? rdd : rdd.withResources(plan.profile());
  }

  /**
   * Fails at once when the barrier stage cannot get a GPU slot for each of its {@code world} tasks (Spark's own
   * check takes ~10 minutes, SPARK-NOTES.md). Waits, up to spark.scheduler.maxRegisteredResourcesWaitingTime,
   * only while fewer executors are registered than the application asked for.
   */
  static void checkSlots(SparkContext sc, int world, Plan plan) {
    ResourceProfile rp = plan.profile() != null ? plan.profile()
        : sc.resourceProfileManager().defaultResourceProfile();
    SparkConf conf = sc.getConf();
    int expected = expectedExecutors(sc.master(), conf);
    long deadline = System.nanoTime() + conf.getTimeAsMs("spark.scheduler.maxRegisteredResourcesWaitingTime", "30s")
        * 1_000_000L;
    int slots = sc.maxNumConcurrentTasks(rp);
    int executors = sc.getExecutorIds().size();
    boolean logged = false;
    while (slots < world && executors < expected && System.nanoTime() < deadline) {
      if (!logged) {
        LOG.info("GPU slot check: " + executors + " of " + expected + " executor(s) registered, " + slots
            + " GPU slot(s) for " + world + " worker(s); waiting for executors");
        logged = true;
      }
      try {
        Thread.sleep(200);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        break;
      }
      slots = sc.maxNumConcurrentTasks(rp);
      executors = sc.getExecutorIds().size();
    }
    if (world > slots) {
      throw new IllegalArgumentException(slotMessage(world, slots, executors, sc.master(), plan.decision()));
    }
  }

  /** The slot check's message: the numbers, and the settings that change them. */
  static String slotMessage(int world, int slots, int executors, String master, Decision d) {
    String perTask = d.mode() == Mode.TASK_PROFILE
        ? "each training task takes 1 GPU and " + d.taskCpus() + " CPU(s) (" + TASK_CPUS_CONF + ")"
        : "each training task takes " + fmt(d.defaultTaskGpus()) + " GPU(s) and " + d.taskCpus() + " CPU(s) of the "
            + "default profile (" + TASK_GPUS + ", spark.task.cpus), because " + d.reason();
    StringBuilder m = new StringBuilder();
    m.append("numWorkers is ").append(world).append(" but this Spark application has only ").append(slots)
        .append(" GPU slot(s) for the training stage (master ").append(master).append(": ").append(executors)
        .append(" executor(s) with ").append(EXECUTOR_GPUS).append('=').append(d.executorGpus()).append("; ")
        .append(perTask).append("); a barrier stage needs all ").append(world).append(" tasks running at once. ")
        .append("Lower numWorkers to <= ").append(slots).append(" or add GPUs: more executors (spark.executor.instances;"
        + " standalone: spark.cores.max / spark.executor.cores) or more GPUs per executor (").append(EXECUTOR_GPUS)
        .append("; standalone: also spark.worker.resource.gpu.amount)");
    double perTaskGpus = d.mode() == Mode.TASK_PROFILE ? 1.0 : d.defaultTaskGpus();
    long byGpus = perTaskGpus > 0 ? (long) Math.floor(executors * (d.executorGpus() / perTaskGpus)) : 0;
    if (slots < byGpus) {
      m.append(". The executors' GPUs would give ").append(byGpus).append(" slot(s); their CPUs limit it to ")
          .append(slots).append(": raise spark.executor.cores to >= GPUs x ").append(d.taskCpus())
          .append(" CPU(s) per task, or lower ").append(d.mode() == Mode.TASK_PROFILE ? TASK_CPUS_CONF
          : "spark.task.cpus");
    }
    return m.toString();
  }

  /**
   * The number of executors the application asked for, where the settings say it (local-cluster[N,..],
   * spark.executor.instances, or standalone's spark.cores.max / spark.executor.cores); 0 when unknown.
   */
  static int expectedExecutors(String master, SparkConf conf) {
    Matcher m = LOCAL_CLUSTER.matcher(master);
    if (m.matches()) {
      return Integer.parseInt(m.group(1));
    }
    if (conf.contains("spark.executor.instances")) {
      return conf.getInt("spark.executor.instances", 0);
    }
    if (master.startsWith("spark://") && conf.contains("spark.cores.max") && conf.contains("spark.executor.cores")) {
      return conf.getInt("spark.cores.max", 0) / Math.max(1, conf.getInt("spark.executor.cores", 1));
    }
    return 0;
  }

  private static String value(Function<String, String> conf, String key, String dflt) {
    String v = conf.apply(key);
    return v == null ? dflt : v;
  }

  private static long parseLong(Function<String, String> conf, String key, long dflt) {
    String v = conf.apply(key);
    if (v == null || v.isBlank()) {
      return dflt;
    }
    try {
      return Long.parseLong(v.trim());
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException(key + " is '" + v + "'; it must be a whole number", e);
    }
  }

  private static double parseDouble(Function<String, String> conf, String key, double dflt) {
    String v = conf.apply(key);
    if (v == null || v.isBlank()) {
      return dflt;
    }
    try {
      return Double.parseDouble(v.trim());
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException(key + " is '" + v + "'; it must be a number", e);
    }
  }

  private static String fmt(double v) {
    return v == Math.rint(v) ? Long.toString((long) v) : Double.toString(v);
  }
}
