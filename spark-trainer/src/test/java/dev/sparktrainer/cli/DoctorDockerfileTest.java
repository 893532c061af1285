package dev.sparktrainer.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * No Docker engine runs here, so docker/Dockerfile is never built in CI; what can be checked is that its
 * versions are the pom's and inside doctor's support matrix, and that doctor's matrix names the pom's builds.
 */
class DoctorDockerfileTest {

  static Map<String, String> args() throws Exception {
    Map<String, String> a = new HashMap<>();
    Matcher m = Pattern.compile("(?m)^ARG ([A-Z_]+)=(\\S+)$")
        .matcher(Files.readString(Path.of("..", "docker", "Dockerfile"), StandardCharsets.UTF_8));
    while (m.find()) {
      a.put(m.group(1), m.group(2));
    }
    return a;
  }

  static String pomProperty(String name) throws Exception {
    Matcher m = Pattern.compile("<" + Pattern.quote(name) + ">([^<]+)</").matcher(
        Files.readString(Path.of("..", "pom.xml"), StandardCharsets.UTF_8));
    assertTrue(m.find(), "pom.xml has no property " + name);
    return m.group(1).trim();
  }

  @Test
  void dockerfileVersionsMatchThePomAndTheSupportMatrix() throws Exception {
    Map<String, String> a = args();
    assertEquals(pomProperty("spark.version"), a.get("SPARK_VERSION"), "Spark in the image vs the pom");
    assertEquals(pomProperty("scala.binary.version"), a.get("SCALA_BINARY"));
    assertEquals(pomProperty("jcuda.version"), a.get("JCUDA_VERSION"));
    assertEquals(pomProperty("maven.compiler.release"), a.get("JAVA_MAJOR"));
    assertEquals(Doctor.CUDA_MAJOR, Doctor.major(a.get("CUDA_VERSION")), "CUDA major of the image");
    assertEquals(String.valueOf(Doctor.CUDNN_MAJOR), a.get("CUDNN_MAJOR"));
    assertTrue(Doctor.atLeast(a.get("NCCL_VERSION"), Doctor.NCCL_MIN), "NCCL " + a.get("NCCL_VERSION"));
    boolean javaSupported = false;
    for (int j : Doctor.JAVA_MAJORS) {
      javaSupported |= String.valueOf(j).equals(a.get("JAVA_MAJOR"));
    }
    assertTrue(javaSupported, "Java " + a.get("JAVA_MAJOR") + " is not in doctor's matrix");
    // The image passes doctor's own checks.
    DoctorFacts image = new DoctorFacts("image", "driver", a.get("JAVA_MAJOR") + ".0.0", "Ubuntu",
        a.get("SPARK_VERSION"), a.get("SCALA_BINARY") + ".17", a.get("JCUDA_VERSION"),
        Doctor.major(a.get("CUDA_VERSION")) * 1000, null, java.util.List.of("GPU"), null,
        a.get("CUDA_VERSION").substring(0, a.get("CUDA_VERSION").lastIndexOf('.')), a.get("CUDNN_MAJOR") + ".0.0",
        a.get("NCCL_VERSION"), "JNI library", null, true, null);
    assertTrue(Doctor.checks(image, true).stream().allMatch(c -> c.status() == Doctor.Status.OK),
        Doctor.checks(image, true).toString());
  }

  @Test
  void doctorNamesThePomsBuilds() throws Exception {
    assertEquals(pomProperty("spark.version"), Doctor.SPARK_BUILT);
    assertEquals(pomProperty("jcuda.version"), Doctor.JCUDA_BUILT);
    assertEquals(pomProperty("scala.binary.version"), Doctor.SCALA_LINE);
  }
}
