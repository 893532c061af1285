package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.nn.ModelSpec;
import java.io.IOException;
import java.io.Serializable;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.resource.ResourceInformation;
import org.apache.spark.resource.ResourceProfile;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import scala.reflect.ClassTag$;
import scala.runtime.AbstractFunction1;

/**
 * GPU scheduling on a real (local-cluster) standalone cluster without GPUs: 2 workers x 2 "GPUs" found by
 * conf/gpu-discovery.sh over a fake nvidia-smi that hands out distinct indices (0,1 to one worker, 2,3 to the
 * other), executors in their own JVMs, a default profile of 0.25 GPU per task (Spark RAPIDS style) and the
 * training stage's task profile of 1 GPU per task. One session for all tests (~10 s to start on 2 cores).
 */
@Timeout(120)
class LocalClusterGpuTest {
  static final String MASTER = "local-cluster[2,2,1024]";
  @TempDir
  static Path dir;
  static SparkSession spark;
  static final List<SparkListenerStageSubmitted> stages = Collections.synchronizedList(new ArrayList<>());

  @BeforeAll
  static void start() throws IOException {
    Path bin = Files.createDirectories(dir.resolve("bin"));
    // The fake nvidia-smi: each call (one per worker) lists the next two GPU indices, under a lock.
    executable(bin.resolve("nvidia-smi"), "#!/usr/bin/env bash\n"
        + "exec 9>\"" + dir.resolve("lock") + "\"; flock 9\n"
        + "n=$(cat \"" + dir.resolve("counter") + "\" 2>/dev/null || echo 0)\n"
        + "echo $((n + 2)) > \"" + dir.resolve("counter") + "\"\n"
        + "echo \"$n, GPU-fake-$n\"; echo \"$((n + 1)), GPU-fake-$((n + 1))\"\n");
    Path discover = executable(dir.resolve("discover.sh"), "#!/usr/bin/env bash\nunset CUDA_VISIBLE_DEVICES\n"
        + "PATH=\"" + bin + ":$PATH\" exec bash \"" + GpuDiscoveryScriptTest.script() + "\"\n");
    SparkConf conf = LocalClusterSupport.conf(MASTER, "LocalClusterGpuTest")
        .set("spark.cores.max", "4")
        .set("spark.worker.resource.gpu.amount", "2")
        .set("spark.worker.resource.gpu.discoveryScript", discover.toString())
        .set("spark.executor.resource.gpu.amount", "2")
        .set("spark.task.resource.gpu.amount", "0.25")
        .set("spark.sql.shuffle.partitions", "4")
        .set("spark.default.parallelism", "4")
        .set("spark.stage.maxConsecutiveAttempts", "1")
        .set("spark.task.maxFailures", "1");
    SparkContext sc = LocalClusterSupport.start(conf, dir);
    spark = SparkSession.builder().getOrCreate(); // takes the context started above
    sc.addSparkListener(new SparkListener() {
      @Override
      public void onStageSubmitted(SparkListenerStageSubmitted e) {
        stages.add(e);
      }
    });
  }

  @AfterAll
  static void stop() {
    if (spark != null) {
      spark.stop();
    }
  }

  @BeforeEach
  void clear() {
    stages.clear();
    spark.conf().unset(GpuScheduling.PROFILE_CONF);
  }

  static Path executable(Path p, String text) throws IOException {
    Files.writeString(p, text);
    Files.setPosixFilePermissions(p, PosixFilePermissions.fromString("rwxr-xr-x"));
    return p;
  }

  /** A barrier task's view: "executor|address|CUDA ordinal|GPU@host", after the duplicate check passed. */
  static final class Probe extends AbstractFunction1<scala.collection.Iterator<Integer>, scala.collection.Iterator<String>>
      implements Serializable {
    private static final long serialVersionUID = 1L;

    @Override
    public scala.collection.Iterator<String> apply(scala.collection.Iterator<Integer> it) {
      BarrierTaskContext ctx = BarrierTaskContext.get();
      SparkWorkerContext wc = new SparkWorkerContext(ctx, "token");
      String key = wc.gpuPlacementKey();
      GpuPlacement.check(wc, key);
      String address = String.join(",", ctx.resources().get("gpu").get().addresses());
      return scala.jdk.javaapi.CollectionConverters.asScala(List.of(SparkEnv.get().executorId() + "|" + address + "|"
          + wc.gpu() + "|" + key).iterator());
    }
  }

  List<SparkListenerStageSubmitted> barrierStages() throws Exception {
    spark.sparkContext().listenerBus().waitUntilEmpty();
    List<SparkListenerStageSubmitted> out = new ArrayList<>();
    for (SparkListenerStageSubmitted s : stages) {
      if (s.stageInfo().rddInfos().exists(r -> r.isBarrier())) {
        out.add(s);
      }
    }
    return out;
  }

  static Dataset<Row> data(int rows) {
    List<Row> list = new ArrayList<>();
    for (int i = 0; i < rows; i++) {
      list.add(RowFactory.create(new float[] {i % 7, (i * 3) % 5, i % 2}, (double) (i % 2)));
    }
    StructType schema = new StructType()
        .add("features", DataTypes.createArrayType(DataTypes.FloatType), false)
        .add("label", DataTypes.DoubleType, false);
    return spark.createDataFrame(list, schema).repartition(4);
  }

  static SparkTrainer trainer(int workers, String device) {
    return new SparkTrainer().setModelSpec(ModelSpec.builder().input(3).linear(2).build())
        .setBatchSize(4).setNumWorkers(workers).setDevice(device).setEpochs(1).setTimeoutSeconds(60);
  }

  @Test
  void fourBarrierTasksGetFourDistinctExecutorGpuPairs() throws Exception {
    GpuScheduling.Plan plan = GpuScheduling.plan(spark, "cuda");
    assertEquals(GpuScheduling.Mode.TASK_PROFILE, plan.mode(), plan.decision().reason());
    GpuScheduling.checkSlots(spark.sparkContext(), 4, plan);
    JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
    List<String> seen = Arrays.asList((String[]) GpuScheduling.withProfile(jsc.parallelize(List.of(1, 2, 3, 4), 4).rdd(),
        plan).barrier().mapPartitions(new Probe(), false, ClassTag$.MODULE$.apply(String.class)).collect());
    assertEquals(4, seen.size(), seen.toString());
    Set<String> pairs = new HashSet<>();
    Set<String> executors = new TreeSet<>();
    Set<String> addresses = new TreeSet<>();
    for (String s : seen) {
      String[] f = s.split("\\|");
      pairs.add(f[0] + "/" + f[1]);
      executors.add(f[0]);
      addresses.add(f[1]);
      assertEquals(f[1], f[2], "without CUDA_VISIBLE_DEVICES the CUDA ordinal is the address: " + s);
      assertTrue(f[3].startsWith(f[1] + "@"), s);
    }
    assertEquals(4, pairs.size(), "(executor, GPU) pairs: " + seen);
    assertEquals(2, executors.size(), seen.toString());
    assertEquals(Set.of("0", "1", "2", "3"), addresses, "the fake discovery hands out distinct GPUs: " + seen);
  }

  @Test
  void trainingStageCarriesTheTaskProfileNextToAQuarterGpuEtlStage() throws Exception {
    // ETL on the default profile: 0.25 GPU per task, so tasks may share a GPU.
    JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
    List<String> etl = jsc.parallelize(List.of(1, 2, 3, 4, 5, 6, 7, 8), 8).mapPartitions(it -> {
      ResourceInformation gpu = TaskContext.get().resources().get("gpu").get();
      return List.of(String.join(",", gpu.addresses())).iterator();
    }).collect();
    assertEquals(8, etl.size());
    for (String a : etl) {
      assertTrue(Set.of("0", "1", "2", "3").contains(a), "an ETL task gets one (shared) GPU: " + etl);
    }
    // Training: device cpu (CI has no CUDA) with the task profile forced on, 4 ranks over 2 executors.
    spark.conf().set(GpuScheduling.PROFILE_CONF, "gpu");
    SparkTrainerModel model = trainer(4, "cpu").fit(data(64));
    assertEquals(1, model.summary().epochs().size());
    List<SparkListenerStageSubmitted> barrier = barrierStages();
    assertEquals(1, barrier.size(), "one barrier stage");
    int rpId = barrier.get(0).stageInfo().resourceProfileId();
    assertNotEquals(ResourceProfile.DEFAULT_RESOURCE_PROFILE_ID(), rpId, "the training stage has its own profile");
    ResourceProfile rp = spark.sparkContext().resourceProfileManager().resourceProfileFromId(rpId);
    assertEquals(1.0, rp.taskResources().get("gpu").get().amount());
    assertEquals(1.0, rp.taskResources().get("cpus").get().amount());
    assertTrue(rp.executorResources().isEmpty(), "a task-only profile: " + rp);
    for (SparkListenerStageSubmitted s : stages) {
      if (!s.stageInfo().rddInfos().exists(r -> r.isBarrier())) {
        assertEquals(ResourceProfile.DEFAULT_RESOURCE_PROFILE_ID(), s.stageInfo().resourceProfileId(),
            "other stages of the fit keep the default profile: " + s.stageInfo().name());
      }
    }
  }

  @Test
  @Timeout(10)
  void moreWorkersThanGpuSlotsFailsFastWithOurMessage() throws Exception {
    SparkTrainer t = trainer(5, "cuda");
    Dataset<Row> d = data(16);
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> t.fit(d));
    assertEquals("numWorkers is 5 but this Spark application has only 4 GPU slot(s) for the training stage (master "
        + MASTER + ": 2 executor(s) with spark.executor.resource.gpu.amount=2; each training task takes 1 GPU and 1 "
        + "CPU(s) (spark.sparktrainer.task.cpus)); a barrier stage needs all 5 tasks running at once. Lower "
        + "numWorkers to <= 4 or add GPUs: more executors (spark.executor.instances; standalone: spark.cores.max / "
        + "spark.executor.cores) or more GPUs per executor (spark.executor.resource.gpu.amount; standalone: also "
        + "spark.worker.resource.gpu.amount)", e.getMessage());
    assertTrue(barrierStages().isEmpty(), "no barrier stage started");
  }
}
