package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.spark.resource.ResourceInformation;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * conf/gpu-discovery.sh with a fake nvidia-smi first on PATH: the JSON it prints is what Spark parses
 * (ResourceInformation.parseJson), CUDA_VISIBLE_DEVICES narrows it, and every failure exits 1 with a reason.
 */
@Timeout(60)
class GpuDiscoveryScriptTest {
  static final String TWO_GPUS = "0, GPU-8a1f0c2e-0000-1111-2222-333344445555\n"
      + "1, GPU-b2c3d4e5-6666-7777-8888-999900001111\n";

  @TempDir
  Path tmp;

  record Run(int exit, String stdout, String stderr) {}

  static Path script() {
    Path dir = Path.of("").toAbsolutePath();
    while (dir != null && !Files.exists(dir.resolve("conf/gpu-discovery.sh"))) {
      dir = dir.getParent();
    }
    if (dir == null) {
      throw new IllegalStateException("conf/gpu-discovery.sh not found above " + Path.of("").toAbsolutePath());
    }
    return dir.resolve("conf/gpu-discovery.sh");
  }

  /** Runs the script with PATH = a folder holding only a fake nvidia-smi (or nothing, when body is null). */
  Run run(String body, Map<String, String> env) throws IOException, InterruptedException {
    Path bin = Files.createDirectories(tmp.resolve("bin-" + System.nanoTime()));
    if (body != null) {
      Path smi = bin.resolve("nvidia-smi");
      Files.writeString(smi, "#!/bin/sh\n" + body);
      Files.setPosixFilePermissions(smi, PosixFilePermissions.fromString("rwxr-xr-x"));
    }
    ProcessBuilder pb = new ProcessBuilder("/bin/bash", script().toString());
    pb.environment().remove("CUDA_VISIBLE_DEVICES");
    pb.environment().put("PATH", bin.toString());
    pb.environment().putAll(env);
    pb.redirectOutput(tmp.resolve("out.txt").toFile()).redirectError(tmp.resolve("err.txt").toFile());
    Process p = pb.start();
    assertTrue(p.waitFor(30, TimeUnit.SECONDS), "the script did not finish");
    return new Run(p.exitValue(), Files.readString(tmp.resolve("out.txt"), StandardCharsets.UTF_8).trim(),
        Files.readString(tmp.resolve("err.txt"), StandardCharsets.UTF_8).trim());
  }

  static String printing(String listing) {
    return "[ \"$1\" = --query-gpu=index,uuid ] || { echo \"unexpected arguments: $*\" >&2; exit 2; }\n"
        + "printf '" + listing.replace("\n", "\\n") + "'\n";
  }

  static void assertGpus(Run r, String... addresses) {
    assertEquals(0, r.exit(), "stderr: " + r.stderr());
    ResourceInformation info = ResourceInformation.parseJson(r.stdout());
    assertEquals("gpu", info.name());
    assertArrayEquals(addresses, info.addresses(), r.stdout());
  }

  @Test
  void printsEveryGpuAsSparkResourceJson() throws Exception {
    Run r = run(printing(TWO_GPUS), Map.of());
    assertEquals("{\"name\":\"gpu\",\"addresses\":[\"0\",\"1\"]}", r.stdout());
    assertGpus(r, "0", "1");
  }

  @Test
  void cudaVisibleDevicesNarrowsTheGpusInItsOrder() throws Exception {
    assertGpus(run(printing(TWO_GPUS), Map.of("CUDA_VISIBLE_DEVICES", "1")), "1");
    assertGpus(run(printing(TWO_GPUS), Map.of("CUDA_VISIBLE_DEVICES", "1,0")), "1", "0");
    assertGpus(run(printing(TWO_GPUS), Map.of("CUDA_VISIBLE_DEVICES", "GPU-b2c3d4e5")), "GPU-b2c3d4e5");
  }

  @Test
  void failuresExitOneWithTheReason() throws Exception {
    Run missing = run(null, Map.of());
    assertEquals(1, missing.exit());
    assertTrue(missing.stderr().startsWith("gpu-discovery.sh: nvidia-smi not found on PATH"), missing.stderr());

    Run broken = run("echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\"\nexit 9\n",
        Map.of());
    assertEquals(1, broken.exit());
    assertEquals("gpu-discovery.sh: nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with "
        + "the NVIDIA driver", broken.stderr());

    Run none = run("echo 'No devices were found'\n", Map.of());
    assertEquals(1, none.exit());
    assertEquals("gpu-discovery.sh: nvidia-smi lists no GPU: No devices were found", none.stderr());

    Run unknown = run(printing(TWO_GPUS), Map.of("CUDA_VISIBLE_DEVICES", "0,5"));
    assertEquals(1, unknown.exit());
    assertEquals("gpu-discovery.sh: CUDA_VISIBLE_DEVICES entry '5' matches no GPU that nvidia-smi lists (indices 0 1)",
        unknown.stderr());

    Run empty = run(printing(TWO_GPUS), Map.of("CUDA_VISIBLE_DEVICES", ""));
    assertEquals(1, empty.exit());
    assertEquals("", empty.stdout());
  }
}
