package dev.sparktrainer.bench.cluster;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The argument parser: defaults, every option, and a message that names the mistake for each kind of error. */
class BenchOptionsTest {

  @Test
  void defaults() {
    BenchOptions o = BenchOptions.parse();
    assertNull(o.master(), "no --master: the session's");
    assertEquals(List.of("mlp", "small-cnn", "resnet50"), o.benches());
    assertEquals(List.of(1), o.worlds());
    assertEquals("auto", o.device());
    assertEquals(Workload.Scale.SMALL, o.scale());
    assertEquals(3, o.epochs());
    assertEquals(1, o.warmupEpochs());
    assertEquals(2, o.measuredEpochs());
    assertEquals("bench-results", o.out());
    assertFalse(o.help());
  }

  @Test
  void everyOption() {
    BenchOptions o = BenchOptions.parse("--master", "local-cluster[2,1,1024]", "--benches", "small-cnn, MLP",
        "--world", "1,2,2,4", "--device", "CPU", "--scale", "tiny", "--epochs", "4", "--warmup-epochs", "2",
        "--batch", "16", "--rows-per-worker", "512", "--out", "hdfs:///bench", "--label", "my-cluster_1.a",
        "--commit", "abc1234", "--seed", "7", "--timeout-seconds", "60", "--conf", "spark.ui.enabled=false",
        "--conf", "spark.a = b=c");
    assertEquals("local-cluster[2,1,1024]", o.master());
    assertEquals(List.of("small-cnn", "mlp"), o.benches());
    assertEquals(List.of(1, 2, 4), o.worlds(), "duplicates dropped, order kept");
    assertEquals("cpu", o.device());
    assertEquals(Workload.Scale.TINY, o.scale());
    assertEquals(4, o.epochs());
    assertEquals(2, o.warmupEpochs());
    assertEquals(16, o.batch());
    assertEquals(512, o.rowsPerWorker());
    assertEquals("hdfs:///bench", o.out());
    assertEquals("my-cluster_1.a", o.label());
    assertEquals("abc1234", o.commit());
    assertEquals(7, o.seed());
    assertEquals(60, o.timeoutSeconds());
    assertEquals(Map.of("spark.ui.enabled", "false", "spark.a", "b=c"), o.conf());
    assertEquals(List.of("mlp", "small-cnn", "resnet50"), BenchOptions.parse("--benches", "all").benches());
    assertTrue(BenchOptions.parse("--help").help());
  }

  @Test
  void mastersSparkAccepts() {
    for (String m : List.of("local", "local[*]", "local[4]", "local[4,2]", "local-cluster[2, 2, 1024]",
        "spark://10.0.0.1:7077", "yarn", "k8s://https://kube:6443", "mesos://zk://h:2181")) {
      assertEquals(m, BenchOptions.parse("--master", m).master());
    }
  }

  @Test
  void oneEpochIsMeasuredUnlessWarmUpIsAsked() {
    assertEquals(0, BenchOptions.parse("--epochs", "1").warmupEpochs());
    assertMessage("leaves no measured epoch", "--epochs", "1", "--warmup-epochs", "1");
    assertMessage("--warmup-epochs 3 leaves no measured epoch of --epochs 3", "--warmup-epochs", "3");
  }

  @Test
  void errorsNameTheOptionAndWhatItTakes() {
    assertMessage("unknown option --worlds (known: --master, --benches, --world", "--worlds", "2");
    assertMessage("--world needs a value", "--world");
    assertMessage("unexpected argument 'mlp'", "mlp");
    assertMessage("--world: '0' is not a positive integer", "--world", "1,0");
    assertMessage("--world: 'two' is not an integer", "--world", "two");
    assertMessage("--world: no world size in ','", "--world", ",");
    assertMessage("--benches: unknown benchmark 'resnet18' (known: mlp, small-cnn, resnet50, all)",
        "--benches", "mlp,resnet18");
    assertMessage("--benches: no benchmark named", "--benches", " , ");
    assertMessage("--device: 'gpu' is not one of auto, cpu, cuda", "--device", "gpu");
    assertMessage("--scale: 'huge' is not one of tiny, small, full", "--scale", "huge");
    assertMessage("--epochs: '0' is not a positive integer", "--epochs", "0");
    assertMessage("--batch: '-8' is not a positive integer", "--batch", "-8");
    assertMessage("--rows-per-worker: '1e6' is not an integer", "--rows-per-worker", "1e6");
    assertMessage("--master: 'localhost:7077' is not a Spark master URL (expected local[*]", "--master",
        "localhost:7077");
    assertMessage("--master: 'local[two]' is not a Spark master URL", "--master", "local[two]");
    assertMessage("--label: 'a/b' must be letters, digits", "--label", "a/b");
    assertMessage("--conf: 'spark.ui.enabled' is not key=value", "--conf", "spark.ui.enabled");
    assertMessage("--out needs a non-empty value", "--out", " ");
  }

  @Test
  void mainPrefixesTheUsage() {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> ClusterBench.main(new String[] {"--device", "tpu"}));
    assertTrue(e.getMessage().startsWith("ClusterBench: --device: 'tpu' is not one of auto, cpu, cuda"),
        e.getMessage());
    assertTrue(e.getMessage().contains("usage: ClusterBench"), e.getMessage());
  }

  @Test
  void workloadsAtEveryScale() {
    for (Workload.Scale s : Workload.Scale.values()) {
      for (String b : Workload.NAMES) {
        Workload w = Workload.of(b, s, 0, 0);
        assertEquals(w.features(), w.spec().inputSize(), b + " " + s + ": the data fits the model");
        assertEquals(w.classes(), w.spec().outputSize(), b + " " + s);
        assertTrue(w.batch() > 0 && w.rowsPerWorker() >= w.batch(), b + " " + s + ": at least one step");
      }
    }
    Workload w = Workload.of("small-cnn", Workload.Scale.TINY, 8, 100);
    assertEquals(8, w.batch());
    assertEquals(100, w.rowsPerWorker());
  }

  private static void assertMessage(String expected, String... args) {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> BenchOptions.parse(args));
    assertTrue(e.getMessage().contains(expected), "expected '" + expected + "' in: " + e.getMessage());
  }
}
