package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.spark.GpuScheduling.Decision;
import dev.sparktrainer.spark.GpuScheduling.Mode;
import java.util.HashMap;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.junit.jupiter.api.Test;

/** The training stage's GPU decision (GpuScheduling.decide) and the GPU slot message, without Spark running. */
class GpuSchedulingTest {
  static Map<String, String> gpuCluster() {
    Map<String, String> c = new HashMap<>();
    c.put("spark.executor.resource.gpu.amount", "2");
    c.put("spark.task.resource.gpu.amount", "0.25");
    return c;
  }

  static Decision decide(String master, Map<String, String> conf, String device) {
    return GpuScheduling.decide(master, conf::get, device);
  }

  @Test
  void gpuExecutorsOnProfileCapableManagersGetATaskProfile() {
    for (String master : new String[] {"spark://m:7077", "local-cluster[2,2,1024]", "yarn", "k8s://https://k:443"}) {
      for (String device : new String[] {"cuda", "auto"}) {
        Decision d = decide(master, gpuCluster(), device);
        assertEquals(Mode.TASK_PROFILE, d.mode(), master + " " + device + ": " + d.reason());
        assertEquals(1, d.taskCpus());
        assertEquals(0.25, d.defaultTaskGpus());
        assertFalse(d.fallback());
      }
    }
  }

  @Test
  void taskCpusComeFromOurSettingThenSparkTaskCpus() {
    Map<String, String> c = gpuCluster();
    c.put("spark.task.cpus", "2");
    assertEquals(2, decide("yarn", c, "cuda").taskCpus());
    c.put(GpuScheduling.TASK_CPUS_CONF, "4");
    assertEquals(4, decide("yarn", c, "cuda").taskCpus());
    c.put(GpuScheduling.TASK_CPUS_CONF, "0");
    assertEquals("spark.sparktrainer.task.cpus is 0; a training task needs >= 1 CPU",
        assertThrows(IllegalArgumentException.class, () -> decide("yarn", c, "cuda")).getMessage());
  }

  @Test
  void localModeNeverTakesGpusFromSpark() {
    Map<String, String> c = gpuCluster();
    c.put(GpuScheduling.PROFILE_CONF, "gpu");
    for (String master : new String[] {"local", "local[2]", "local[*]"}) {
      Decision d = decide(master, c, "cuda");
      assertEquals(Mode.NONE, d.mode());
      assertTrue(d.reason().startsWith("local mode (" + master + ")"), d.reason());
    }
  }

  @Test
  void cpuTrainingTakesNoGpusUnlessAsked() {
    assertEquals(Mode.NONE, decide("spark://m:7077", gpuCluster(), "cpu").mode());
    Map<String, String> c = gpuCluster();
    c.put(GpuScheduling.PROFILE_CONF, "GPU");
    assertEquals(Mode.TASK_PROFILE, decide("spark://m:7077", c, "cpu").mode());
  }

  @Test
  void offUsesTheDefaultProfile() {
    Map<String, String> c = gpuCluster();
    c.put(GpuScheduling.PROFILE_CONF, "off");
    assertEquals(Mode.DEFAULT_PROFILE, decide("yarn", c, "cuda").mode());
    c.remove("spark.task.resource.gpu.amount");
    assertEquals(Mode.NONE, decide("yarn", c, "cuda").mode());
  }

  @Test
  void executorsWithoutGpusTakeNone() {
    Decision d = decide("spark://m:7077", new HashMap<>(), "auto");
    assertEquals(Mode.NONE, d.mode());
    assertTrue(d.reason().contains("spark.executor.resource.gpu.amount is not set"), d.reason());
  }

  @Test
  void unsupportedManagersAndDynamicAllocationFallBackToTheDefaultProfile() {
    Decision d = decide("mesos://m:5050", gpuCluster(), "cuda");
    assertEquals(Mode.DEFAULT_PROFILE, d.mode());
    assertTrue(d.fallback());
    assertEquals("the cluster manager of master mesos://m:5050 does not support task resource profiles; the "
        + "training stage uses the default profile (spark.task.resource.gpu.amount=0.25)", d.reason());
    Map<String, String> c = gpuCluster();
    c.put("spark.dynamicAllocation.enabled", "true");
    c.put("spark.task.resource.gpu.amount", "1");
    d = decide("yarn", c, "cuda");
    assertEquals(Mode.DEFAULT_PROFILE, d.mode());
    assertTrue(d.fallback());
    assertTrue(d.reason().startsWith("dynamic allocation is on"), d.reason());
    c.remove("spark.task.resource.gpu.amount");
    assertEquals(Mode.NONE, decide("yarn", c, "cuda").mode());
  }

  @Test
  void badSettingsFailWithTheirName() {
    Map<String, String> c = gpuCluster();
    c.put(GpuScheduling.PROFILE_CONF, "always");
    assertEquals("spark.sparktrainer.resourceProfile is 'always'; use auto, gpu or off",
        assertThrows(IllegalArgumentException.class, () -> decide("yarn", c, "cuda")).getMessage());
    Map<String, String> d = gpuCluster();
    d.put("spark.executor.resource.gpu.amount", "two");
    assertEquals("spark.executor.resource.gpu.amount is 'two'; it must be a whole number",
        assertThrows(IllegalArgumentException.class, () -> decide("yarn", d, "cuda")).getMessage());
  }

  @Test
  void slotMessageGivesTheNumbersAndTheSettings() {
    Decision d = decide("local-cluster[2,2,1024]", gpuCluster(), "cuda");
    assertEquals("numWorkers is 5 but this Spark application has only 4 GPU slot(s) for the training stage (master "
        + "local-cluster[2,2,1024]: 2 executor(s) with spark.executor.resource.gpu.amount=2; each training task "
        + "takes 1 GPU and 1 CPU(s) (spark.sparktrainer.task.cpus)); a barrier stage needs all 5 tasks running at "
        + "once. Lower numWorkers to <= 4 or add GPUs: more executors (spark.executor.instances; standalone: "
        + "spark.cores.max / spark.executor.cores) or more GPUs per executor (spark.executor.resource.gpu.amount; "
        + "standalone: also spark.worker.resource.gpu.amount)",
        GpuScheduling.slotMessage(5, 4, 2, "local-cluster[2,2,1024]", d));
    // CPUs, not GPUs, limit the slots: the message says which setting to change.
    String cpuBound = GpuScheduling.slotMessage(4, 2, 2, "yarn", d);
    assertTrue(cpuBound.endsWith(". The executors' GPUs would give 4 slot(s); their CPUs limit it to 2: raise "
        + "spark.executor.cores to >= GPUs x 1 CPU(s) per task, or lower spark.sparktrainer.task.cpus"), cpuBound);
  }

  @Test
  void expectedExecutorsFromTheSettings() {
    assertEquals(2, GpuScheduling.expectedExecutors("local-cluster[2,2,1024]", new SparkConf(false)));
    assertEquals(8, GpuScheduling.expectedExecutors("yarn", new SparkConf(false).set("spark.executor.instances", "8")));
    assertEquals(3, GpuScheduling.expectedExecutors("spark://m:7077",
        new SparkConf(false).set("spark.cores.max", "24").set("spark.executor.cores", "8")));
    assertEquals(0, GpuScheduling.expectedExecutors("spark://m:7077", new SparkConf(false)));
  }
}
