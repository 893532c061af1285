package dev.sparktrainer.bench.cluster;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * Every job definition in benchmarks/cluster/ (Databricks Jobs API 2.1): it parses, every task runs the real
 * ClusterBench class (a spark_jar_task's main_class_name, or spark_submit_task's --class) with parameters
 * the argument parser accepts (parse only, nothing runs), on a fixed-size new_cluster whose Spark settings
 * give barrier stages what they need and, on GPU clusters, enough GPU slots for the largest W asked for.
 */
class JobDefinitionsTest {
  static final Path DIR = Path.of("cluster"); // surefire runs in the module folder (benchmarks/)
  static final String MAIN = ClusterBench.class.getName();
  /** spark-submit options that take no value. */
  static final Set<String> SUBMIT_FLAGS = Set.of("--verbose", "-v", "--supervise", "--help", "-h", "--version");

  @Test
  void everyJobDefinitionRunsClusterBenchWithValidParameters() throws Exception {
    List<Path> files;
    try (Stream<Path> s = Files.list(DIR)) {
      files = s.filter(p -> p.toString().endsWith(".json")).sorted().toList();
    }
    assertTrue(files.size() >= 3, "job definitions in " + DIR.toAbsolutePath() + ": " + files);
    assertEquals(MAIN, Class.forName(MAIN).getName());
    List<String> kinds = new ArrayList<>();
    for (Path f : files) {
      JsonNode job = new ObjectMapper().readTree(f.toFile());
      assertTrue(job.path("name").isTextual(), f + ": name");
      JsonNode tasks = job.path("tasks");
      assertTrue(tasks.isArray() && tasks.size() > 0, f + ": tasks");
      for (JsonNode t : tasks) {
        String where = f.getFileName() + " task " + t.path("task_key").asText();
        assertFalse(t.path("task_key").asText().isEmpty(), where + ": task_key");
        List<String> args;
        if (t.has("spark_jar_task")) {
          assertEquals(MAIN, t.path("spark_jar_task").path("main_class_name").asText(), where);
          args = strings(t.path("spark_jar_task").path("parameters"));
          assertTrue(t.path("libraries").findValuesAsText("jar").stream().anyMatch(j -> j.endsWith("benchmarks.jar")),
              where + ": benchmarks.jar among the libraries");
          kinds.add("jar");
        } else if (t.has("spark_submit_task")) {
          args = appArgs(strings(t.path("spark_submit_task").path("parameters")), where);
          kinds.add("submit");
        } else {
          fail(where + ": neither spark_jar_task nor spark_submit_task");
          return;
        }
        BenchOptions o;
        try {
          o = BenchOptions.parse(args.toArray(String[]::new));
        } catch (IllegalArgumentException e) {
          throw new AssertionError(where + ": ClusterBench rejects its parameters " + args + ": " + e.getMessage(), e);
        }
        assertEquals(null, o.master(), where + ": no --master (the cluster's session)");
        checkCluster(t.path("new_cluster"), o, where);
      }
    }
    assertTrue(kinds.contains("jar") && kinds.contains("submit"), "both task kinds are shown: " + kinds);
  }

  /** The cluster: fixed size, barrier-friendly settings; GPU clusters: slots for the largest W. */
  static void checkCluster(JsonNode c, BenchOptions o, String where) {
    assertTrue(c.isObject(), where + ": new_cluster");
    assertTrue(c.path("spark_version").asText().matches("\\d+\\.\\d+\\.x-.*scala2\\.13"),
        where + ": a Scala 2.13 runtime (Spark 4): " + c.path("spark_version"));
    assertFalse(c.path("node_type_id").asText().isEmpty(), where + ": node_type_id");
    assertTrue(c.path("num_workers").isInt(), where + ": num_workers (fixed size: barrier stages need every worker)");
    assertFalse(c.has("autoscale"), where + ": no autoscale");
    JsonNode conf = c.path("spark_conf");
    assertEquals("false", conf.path("spark.dynamicAllocation.enabled").asText(), where);
    assertEquals("1.0", conf.path("spark.scheduler.minRegisteredResourcesRatio").asText(), where);
    int workers = c.path("num_workers").asInt();
    int maxW = o.worlds().stream().mapToInt(Integer::intValue).max().orElseThrow();
    boolean gpu = conf.has("spark.executor.resource.gpu.amount");
    assertEquals(gpu, c.path("spark_version").asText().contains("gpu"), where + ": GPU runtime iff GPU settings");
    if (gpu) {
      assertEquals("cuda", o.device(), where + ": a GPU cluster benchmarks the GPUs");
      int gpus = Integer.parseInt(conf.path("spark.executor.resource.gpu.amount").asText());
      assertTrue(conf.path("spark.executor.resource.gpu.discoveryScript").asText().endsWith("gpu-discovery.sh"),
          where + ": discovery script");
      double taskGpu = Double.parseDouble(conf.path("spark.task.resource.gpu.amount").asText());
      int cores = Integer.parseInt(conf.path("spark.executor.cores").asText());
      int taskCpus = Integer.parseInt(conf.path("spark.task.cpus").asText("1"));
      int trainCpus = Integer.parseInt(conf.path("spark.sparktrainer.task.cpus").asText());
      assertTrue(taskGpu > 0 && taskGpu <= 1, where + ": spark.task.resource.gpu.amount in (0, 1]");
      assertEquals(cores / taskCpus, gpus * (int) Math.floor(1 / taskGpu + 1e-9),
          where + ": ETL tasks: GPUs and cores allow the same number");
      int slots = workers * Math.min(gpus, cores / trainCpus);
      assertTrue(maxW <= slots, where + ": --world up to " + maxW + " but the cluster has " + slots
          + " training slots (" + workers + " workers x " + gpus + " GPUs, " + cores + " cores / " + trainCpus + ")");
      assertEquals("dev.sparktrainer.spark.TrainerKryoRegistrator", conf.path("spark.kryo.registrator").asText());
    } else {
      assertEquals("cpu", o.device(), where + ": a CPU cluster runs device cpu");
      int cores = Integer.parseInt(conf.path("spark.executor.cores").asText());
      int taskCpus = Integer.parseInt(conf.path("spark.task.cpus").asText("1"));
      assertTrue(maxW <= workers * (cores / taskCpus), where + ": --world up to " + maxW + " but "
          + workers * (cores / taskCpus) + " task slots");
    }
  }

  /** The application's arguments in spark-submit parameters: after --class MAIN, options, and the app jar. */
  static List<String> appArgs(List<String> p, String where) {
    int i = 0;
    String cls = null;
    while (i < p.size() && p.get(i).startsWith("-")) {
      String opt = p.get(i);
      if (SUBMIT_FLAGS.contains(opt)) {
        i++;
        continue;
      }
      assertTrue(i + 1 < p.size(), where + ": " + opt + " needs a value");
      if (opt.equals("--class")) {
        cls = p.get(i + 1);
      }
      i += 2;
    }
    assertEquals(MAIN, cls, where + ": spark-submit --class");
    assertTrue(i < p.size() && p.get(i).endsWith(".jar"), where + ": the application jar after the options: " + p);
    return p.subList(i + 1, p.size());
  }

  private static List<String> strings(JsonNode a) {
    assertTrue(a.isArray(), "parameters must be a JSON array of strings: " + a);
    List<String> out = new ArrayList<>();
    a.forEach(n -> {
      assertTrue(n.isTextual(), "parameter " + n + " must be a string");
      out.add(n.asText());
    });
    return out;
  }
}
