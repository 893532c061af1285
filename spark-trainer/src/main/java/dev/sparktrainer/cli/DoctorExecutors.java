package dev.sparktrainer.cli;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.resource.ResourceInformation;
import org.apache.spark.sql.SparkSession;

/**
 * The doctor's executor check: a tiny Spark job (one plain task per slot, no GPU requested) in which every
 * task probes its executor's JVM and host; facts come back as JSON strings, one per executor.
 */
final class DoctorExecutors {
  private DoctorExecutors() {}

  /** True when spark-submit started us against a cluster master (then executors are checked too). */
  static boolean activeSessionIsCluster() {
    String m = System.getProperty("spark.master");
    return m != null && !m.startsWith("local");
  }

  /**
   * Facts of every executor that ran a task, in executor order. Uses the active session or starts one on
   * {@code master} (stopped afterwards).
   */
  static List<DoctorFacts> probe(String master, int tasks) {
    boolean own = SparkSession.getActiveSession().isEmpty();
    SparkSession.Builder b = SparkSession.builder().appName("spark-trainer doctor");
    if (master != null) {
      b.master(master);
    }
    SparkSession spark = b.getOrCreate();
    try {
      JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
      int n = tasks > 0 ? tasks : Math.max(1, sc.defaultParallelism());
      sc.setJobDescription("spark-trainer doctor: what the executors see");
      List<String> json = sc.parallelize(IntStream.range(0, n).boxed().collect(Collectors.toList()), n)
          .map(i -> probeTask()).collect();
      Map<String, DoctorFacts> byExecutor = new LinkedHashMap<>();
      for (String j : json) {
        DoctorFacts f = DoctorFacts.fromJson(j);
        byExecutor.putIfAbsent(f.executorId() + "@" + f.host(), f);
      }
      return new ArrayList<>(byExecutor.values());
    } finally {
      if (own) {
        spark.stop();
      }
    }
  }

  /** Runs inside a task: this executor's facts with its id and the task's GPU addresses. */
  static String probeTask() {
    TaskContext ctx = TaskContext.get();
    String gpus = "";
    if (ctx != null) {
      ResourceInformation ri = ctx.resourcesJMap().get("gpu");
      gpus = ri == null ? "" : String.join(",", ri.addresses());
    }
    String id = SparkEnv.get() == null ? "?" : SparkEnv.get().executorId();
    return DoctorFacts.probe().onExecutor(id, gpus).toJson();
  }
}
