package dev.sparktrainer.bench.cluster;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.awt.image.BufferedImage;
import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import javax.imageio.ImageIO;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * ClusterBench end to end on local[2], CPU, tiny sizes: mlp and small-cnn at W = 1 and 2 through
 * SparkTrainer.fit; the JSON, Markdown and PNG files exist and read back. A fit that cannot run (W = 3 on two
 * task slots) is recorded with its error and makes main fail after writing the report.
 */
class ClusterBenchTest {
  static final ObjectMapper JSON = new ObjectMapper();
  static final List<String> REQUIRED = List.of("benchmark", "world", "ours", "pytorch", "unit", "card", "commit");
  static final String[] SESSION = {"--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
      "--conf", "spark.driver.bindAddress=127.0.0.1", "--conf", "spark.sql.shuffle.partitions=2"};

  @Test
  @Timeout(240)
  void localTwoWorkersWritesTheReport(@TempDir Path dir) throws Exception {
    Path out = dir.resolve("results");
    BenchOptions o = BenchOptions.parse(concat(new String[] {"--master", "local[2]", "--scale", "tiny",
        "--device", "cpu", "--world", "1,2", "--benches", "mlp,small-cnn", "--epochs", "2", "--out", out.toString(),
        "--commit", "test123"}, SESSION));
    ClusterBench.Result r = ClusterBench.run(o);
    assertTrue(SparkSession.getActiveSession().isEmpty(), "the session ClusterBench started is stopped");
    assertTrue(r.failures().isEmpty(), "failures: " + r.failures());

    // <out>/<yyyy-mm-dd>-local2-cpu-1.{json,md,png}
    Pattern name = Pattern.compile("\\d{4}-\\d{2}-\\d{2}-local2-cpu-1\\.(json|md|png)");
    List<String> names;
    try (Stream<Path> s = Files.list(out)) {
      names = s.map(p -> p.getFileName().toString()).sorted().toList();
    }
    assertEquals(3, names.size(), "only the three report files (no .crc): " + names);
    names.forEach(n -> assertTrue(name.matcher(n).matches(), n));
    Path json = Path.of(new java.net.URI(r.files().json()));
    Path md = Path.of(new java.net.URI(r.files().markdown()));
    assertNotNull(r.files().png(), "the chart was drawn (needs fontconfig and a font, as .ci/run installs)");
    Path png = Path.of(new java.net.URI(r.files().png()));

    JsonNode entries = JSON.readTree(json.toFile());
    assertTrue(entries.isArray());
    assertEquals(4, entries.size());
    List<String> seen = new ArrayList<>();
    for (JsonNode e : entries) {
      for (String k : REQUIRED) {
        assertTrue(e.has(k), "entry lacks " + k + ": " + e);
      }
      seen.add(e.get("benchmark").asText() + "@" + e.get("world").asInt());
      assertTrue(e.get("ours").isNumber() && e.get("ours").asDouble() > 0, "positive throughput: " + e);
      assertTrue(e.get("pytorch").isNull());
      assertEquals("samples/s", e.get("unit").asText());
      assertTrue(e.get("card").asText().matches("cpu \\(\\d+ cores\\)"), e.get("card").asText());
      assertEquals("test123", e.get("commit").asText());
      assertEquals("cpu", e.get("device").asText());
      assertEquals("tiny", e.get("scale").asText());
      assertEquals(1, e.get("ours_repeats").size(), "2 epochs, 1 warm-up");
      assertTrue(e.get("fit_to_first_step_s").asDouble() > 0);
      int w = e.get("world").asInt();
      assertEquals(w, e.get("ranks").size(), "per-rank breakdown");
      for (JsonNode rank : e.get("ranks")) {
        assertTrue(rank.get("samples_per_s").asDouble() > 0, rank.toString());
        assertTrue(rank.get("compute_s").asDouble() > 0, rank.toString());
      }
      assertEquals(w == 2, e.has("ours_scaling"), "scaling vs W = 1 at W = 2: " + e);
      assertTrue(!e.has("ours_peak_mem_gib"), "the CPU device reports no peak memory");
    }
    assertEquals(List.of("mlp@1", "mlp@2", "small-cnn@1", "small-cnn@2"), seen);

    String text = Files.readString(md);
    assertTrue(text.startsWith("# Cluster benchmarks "), text);
    assertTrue(text.contains("| benchmark | W | samples/s | scaling |"), text);
    assertTrue(text.contains("| mlp | 2 | ") && text.contains("| small-cnn | 1 | "), text);

    BufferedImage img = ImageIO.read(png.toFile());
    assertNotNull(img, "a PNG ImageIO reads");
    assertTrue(img.getWidth() > 0 && img.getHeight() > 0);
  }

  @Test
  @Timeout(120)
  void aFitThatCannotRunIsReportedAndMainFails(@TempDir Path dir) throws Exception {
    Path out = dir.resolve("results");
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> ClusterBench.main(concat(
        new String[] {"--master", "local[2]", "--scale", "tiny", "--device", "cpu", "--world", "3", "--benches",
            "mlp", "--epochs", "1", "--out", out.toString(), "--label", "fail"}, SESSION)));
    assertTrue(e.getMessage().startsWith("1 of 1 benchmark runs failed"), e.getMessage());
    assertTrue(e.getMessage().contains("mlp W=3"), e.getMessage());
    File[] files = out.toFile().listFiles((d, n) -> n.endsWith("-fail-1.json"));
    assertEquals(1, files.length);
    JsonNode entry = JSON.readTree(files[0]).get(0);
    assertTrue(entry.get("ours").isNull());
    assertTrue(entry.get("error").asText().contains("numWorkers is 3"), entry.toString());
  }

  @Test
  void reportsAreNumberedAndNeverOverwritten(@TempDir Path dir) throws Exception {
    ClusterInfo info = new ClusterInfo("local[2]", "4.1.0", 1, 2, 2, "cpu", List.of(), 0, false);
    BenchOptions o = BenchOptions.parse("--scale", "tiny", "--device", "cpu");
    BenchReport.Context c = new BenchReport.Context("2026-01-02", "lab", "abc", info, o);
    Workload w = Workload.of("mlp", Workload.Scale.TINY, 0, 0);
    List<Map<String, Object>> entries = List.of(BenchReport.failed(c, w, 1, new RuntimeException("boom\nmore")));
    BenchReport.Files a = BenchReport.write(entries, c, dir.toString(), new Configuration());
    BenchReport.Files b = BenchReport.write(entries, c, dir.toString(), new Configuration());
    assertTrue(a.json().endsWith("/2026-01-02-lab-1.json"), a.json());
    assertTrue(b.json().endsWith("/2026-01-02-lab-2.json"), b.json());
    assertTrue(b.png().endsWith("/2026-01-02-lab-2.png"), b.png());
    JsonNode e = JSON.readTree(Path.of(new java.net.URI(a.json())).toFile()).get(0);
    assertEquals("RuntimeException: boom", e.get("error").asText());
    assertEquals("cpu (2 cores)", e.get("card").asText());
    String md = BenchReport.markdown(entries, c, "t");
    assertTrue(md.contains("| mlp | 1 | failed |") && md.contains("- mlp W=1: RuntimeException: boom"), md);
  }

  @Test
  void labelsAndCards() {
    ClusterInfo gpu = new ClusterInfo("spark://10.0.0.1:7077", "4.0.0", 2, 48, 96, "x",
        List.of("NVIDIA A10G"), 4, false);
    assertEquals("standalone-a10g", gpu.label("cuda"));
    assertEquals("standalone-cpu", gpu.label("cpu"));
    assertEquals("NVIDIA A10G", gpu.card("cuda:0"));
    assertEquals("cpu (2 x 48 cores)", gpu.card("cpu"));
    assertEquals("h100", ClusterInfo.shortGpuName("NVIDIA H100 80GB HBM3"));
    assertEquals("t4", ClusterInfo.shortGpuName("Tesla T4"));
    ClusterInfo lc = new ClusterInfo("local-cluster[2,1,1024]", "4.1.0", 2, 1, 2, "", List.of(), 0, false);
    assertEquals("local-cluster2-cpu", lc.label("auto"));
    ClusterInfo db = new ClusterInfo("spark://x:7077", "4.0.0", 1, 16, 16, "", List.of(), 0, true);
    assertEquals("databricks-cpu", db.label("auto"));
    assertEquals("k8s-cpu", new ClusterInfo("k8s://https://k:6443", "4.1.0", 1, 1, 1, "", List.of(), 0, false)
        .label("cpu"));
  }

  static String[] concat(String[] a, String[] b) {
    String[] r = new String[a.length + b.length];
    System.arraycopy(a, 0, r, 0, a.length);
    System.arraycopy(b, 0, r, a.length, b.length);
    return r;
  }
}
