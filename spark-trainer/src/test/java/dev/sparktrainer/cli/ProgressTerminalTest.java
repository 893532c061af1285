package dev.sparktrainer.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The progress bar without a screenshot: the spark-submit app runs under a pseudo-terminal ({@code script}),
 * so the driver has a console and draws the bar; the test reads what the terminal received.
 */
@Timeout(240)
class ProgressTerminalTest {

  @Test
  void theBarIsDrawnOnATerminal(@TempDir Path dir) throws Exception {
    Assumptions.assumeTrue(new File("/usr/bin/script").canExecute(), "util-linux script is not installed");
    Path csv = dir.resolve("blobs.csv");
    Random r = new Random(1);
    StringBuilder b = new StringBuilder("a,b,c,d,label\n");
    for (int i = 0; i < 400; i++) {
      int label = i % 3;
      b.append(String.format(Locale.ROOT, "%.4f,%.4f,%.4f,%.4f,%d%n", label * 2 + r.nextGaussian() * 0.5,
          -label + r.nextGaussian() * 0.5, r.nextGaussian(), label * 0.5 + r.nextGaussian() * 0.5, label));
    }
    Files.writeString(csv, b.toString());
    Path job = dir.resolve("job.json");
    Files.writeString(job, "{\"data\": {\"format\": \"csv\", \"path\": \"" + csv + "\", \"featureCols\": [\"a\", \"b\", "
        + "\"c\", \"d\"]}, \"model\": {\"input\": [4], \"layers\": [{\"type\": \"linear\", \"units\": 16}, "
        + "{\"type\": \"relu\"}, {\"type\": \"linear\", \"units\": 3}]}, \"training\": {\"epochs\": 3, "
        + "\"batchSize\": 20, \"numWorkers\": 2, \"device\": \"cpu\", \"seed\": 1}}");
    Path summary = dir.resolve("summary");
    String cp = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
    Path opens = Path.of("..", "conf", "jvm.options").toAbsolutePath().normalize();
    List<String> java = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
        // C1 only, serial GC, no UI: half the start-up time of a cold JVM on 2 cores
        "-Xmx1g", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Dspark.ui.enabled=false",
        "-Dspark.sql.shuffle.partitions=2", "@" + opens, "-cp", cp, "dev.sparktrainer.cli.SparkTrainApp", "--config", job.toString(),
        "--master", "local[2]", "--summary", summary.toString()));
    Path cmdFile = dir.resolve("run.sh");
    StringBuilder cmd = new StringBuilder("exec");
    for (String a : java) {
      cmd.append(" '").append(a.replace("'", "'\\''")).append('\'');
    }
    Files.writeString(cmdFile, cmd + "\n");
    Path log = dir.resolve("terminal.log");
    Process p = new ProcessBuilder("script", "-qec", "bash " + cmdFile, "/dev/null")
        .redirectErrorStream(true).redirectOutput(log.toFile()).redirectInput(ProcessBuilder.Redirect.PIPE)
        .start();
    assertTrue(p.waitFor(200, TimeUnit.SECONDS), "the app did not finish");
    String out = Files.readString(log, StandardCharsets.UTF_8);
    assertEquals(0, p.exitValue(), out);
    // 400 rows, W = 2, B = 20: 10 steps per epoch, 30 in all. The bar is redrawn in place (\r) ...
    assertTrue(out.contains("\repoch 1/3 ["), out);
    // ... and ends complete on its own line.
    assertTrue(out.matches("(?s).*\repoch 3/3 \\[#{30}\\] 100% step 30/30, [0-9,]+ samples/s, done *\r?\n.*"), out);
    assertTrue(out.contains("epoch 3: loss "), out); // the summary printed after the bar
    assertTrue(Files.size(summary.resolve("curves.png")) > 0);
    assertTrue(Files.readString(summary.resolve("summary.json")).contains("\"worldSize\" : 2"));
  }
}
