package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.spark.GpuScheduling.Decision;
import dev.sparktrainer.spark.GpuScheduling.Mode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.apache.spark.SparkConf;
import org.apache.spark.resource.ResourceRequirement;
import org.apache.spark.resource.ResourceUtils;
import org.junit.jupiter.api.Test;

/**
 * The conf/spark-defaults.*-gpu.conf templates: Spark accepts their resource settings, the training stage gets
 * its task profile with each of them, CPUs never cut the training slots below the GPUs, and where ETL tasks
 * share GPUs, GPUs and cores allow the same number of ETL tasks (no idle cores or GPUs).
 */
class ResourceConfTemplatesTest {
  static Map<String, String> load(Path file) throws IOException {
    Map<String, String> conf = new LinkedHashMap<>();
    for (String line : Files.readAllLines(file)) {
      String l = line.trim();
      if (l.isEmpty() || l.startsWith("#")) {
        continue;
      }
      String[] kv = l.split("\\s+", 2);
      assertEquals(2, kv.length, file.getFileName() + ": no value in '" + line + "'");
      assertTrue(kv[0].startsWith("spark."), file.getFileName() + ": " + kv[0]);
      assertNull(conf.put(kv[0], kv[1]), file.getFileName() + ": " + kv[0] + " twice");
    }
    return conf;
  }

  static List<Path> templates() throws IOException {
    Path conf = GpuDiscoveryScriptTest.script().getParent();
    List<Path> out = new ArrayList<>();
    try (Stream<Path> files = Files.list(conf)) {
      files.filter(p -> p.getFileName().toString().matches("spark-defaults\\..*-gpu\\.conf")).sorted()
          .forEach(out::add);
    }
    return out;
  }

  @Test
  void everyGpuTemplateGivesTheTrainingStageOneGpuPerTask() throws IOException {
    List<Path> files = templates();
    assertEquals(List.of("spark-defaults.databricks-gpu.conf", "spark-defaults.k8s-gpu.conf",
        "spark-defaults.rapids-gpu.conf", "spark-defaults.standalone-gpu.conf", "spark-defaults.yarn-gpu.conf"),
        files.stream().map(p -> p.getFileName().toString()).toList());
    for (Path file : files) {
      String name = file.getFileName().toString();
      Map<String, String> c = load(file);
      SparkConf sc = new SparkConf(false);
      c.forEach(sc::set);
      // Spark's own parsing of the resource settings (throws on a bad amount or a missing part).
      ResourceUtils.parseAllResourceRequests(sc, "spark.executor");
      scala.collection.immutable.Seq<ResourceRequirement> task = ResourceUtils.parseResourceRequirements(sc, "spark.task");
      assertEquals("false", c.get("spark.dynamicAllocation.enabled"), name + ": barrier stages need it off");

      Decision d = GpuScheduling.decide(c.get("spark.master"), c::get, "auto");
      assertEquals(Mode.TASK_PROFILE, d.mode(), name + ": " + d.reason());
      assertFalse(d.fallback(), name);
      long gpus = Long.parseLong(c.get("spark.executor.resource.gpu.amount"));
      int cores = Integer.parseInt(c.get("spark.executor.cores"));
      assertTrue(cores / d.taskCpus() >= gpus, name + ": " + cores + " cores cannot run " + gpus + " training tasks of "
          + d.taskCpus() + " CPU(s)");
      if (c.containsKey("spark.task.resource.gpu.amount")) {
        double share = Double.parseDouble(c.get("spark.task.resource.gpu.amount"));
        long etlByGpus = gpus * (long) Math.floor(1 / share + 1e-9);
        long etlByCores = cores / Integer.parseInt(c.getOrDefault("spark.task.cpus", "1"));
        assertEquals(etlByCores, etlByGpus, name + ": ETL tasks per executor by GPUs vs by cores");
        assertEquals(1, task.size(), name);
      }
    }
  }
}
