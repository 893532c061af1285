package dev.sparktrainer.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cli.Doctor.Check;
import dev.sparktrainer.cli.Doctor.Status;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** doctor's checks against fake environments, and a real run on this (GPU-less) machine. */
@Timeout(120)
class DoctorTest {

  /** A healthy GPU host: the combination the project was tested with. */
  static DoctorFacts gpuHost() {
    return new DoctorFacts("gpu-host", "driver", "17.0.15", "Eclipse Adoptium", "4.1.0", "2.13.17", "12.6.0", 13000,
        null, List.of("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"), null, "13.0", "9.14.0", "2.28.3",
        "JNI library", null, true, null);
  }

  static DoctorFacts with(DoctorFacts f, int driver, String problem, List<String> gpus, String runtime,
      String cudnn, String nccl, boolean kernels) {
    return new DoctorFacts(f.host(), f.executorId(), f.javaVersion(), f.javaVendor(), f.sparkVersion(),
        f.scalaVersion(), f.jcudaVersion(), driver, problem, gpus, f.cudaVisibleDevices(), runtime, cudnn, nccl,
        f.librarySource(), f.jniProblem(), kernels, f.taskGpus());
  }

  static Check check(List<Check> checks, String name) {
    return checks.stream().filter(c -> c.name().equals(name)).findFirst()
        .orElseThrow(() -> new AssertionError("no check " + name + " in " + checks));
  }

  @Test
  void healthyGpuHostPassesEveryCheck() {
    List<Check> c = Doctor.checks(gpuHost(), true);
    for (Check x : c) {
      assertEquals(Status.OK, x.status(), x.toString());
      assertNull(x.fix(), x.toString());
    }
    assertEquals("2: NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3", check(c, "GPUs").found());
    assertEquals("CUDA 13.0", check(c, "NVIDIA driver").found());
  }

  @Test
  void missingDriver() {
    String reason = "JCuda could not load (UnsatisfiedLinkError: libcuda.so.1: cannot open shared object file)";
    DoctorFacts f = with(gpuHost(), 0, reason, List.of(), null, null, null, false);
    // CPU mode: not a failure, but says so and how to get GPUs
    Check d = check(Doctor.checks(f, false), "NVIDIA driver");
    assertEquals(Status.SKIP, d.status());
    assertEquals("not found (" + reason + ")", d.found());
    assertEquals("no GPU: training runs on the CPU (device auto -> cpu). To train on GPUs, install the NVIDIA "
        + "driver R580 or newer (CUDA 13)", d.fix());
    assertFalse(Doctor.failed(Doctor.checks(f, false)));
    // GPU required: a failure with the fix
    Check g = check(Doctor.checks(f, true), "NVIDIA driver");
    assertEquals(Status.FAIL, g.status());
    assertEquals("install the NVIDIA driver R580 or newer (CUDA 13); `nvidia-smi` must list the GPUs. In a "
        + "container: run it with the NVIDIA container toolkit (--gpus all)", g.fix());
    assertEquals("install NCCL 2.18+ built for CUDA 13 (package libnccl2) or add its lib folder to LD_LIBRARY_PATH",
        check(Doctor.checks(f, true), "NCCL").fix());
  }

  @Test
  void wrongCudaMajor() {
    DoctorFacts f = with(gpuHost(), 12040, null, List.of("NVIDIA A100-SXM4-80GB"), "12.4", "8.9.7", "2.16.5", false);
    List<Check> c = Doctor.checks(f, false);
    Check d = check(c, "NVIDIA driver");
    assertEquals(Status.FAIL, d.status());
    assertEquals("CUDA 12.4 (too old)", d.found());
    assertEquals("this build's kernels need a driver for CUDA 13: upgrade the NVIDIA driver to R580 or newer "
        + "(`nvidia-smi` shows \"CUDA Version: 13.x\"), or rebuild native/ with the CUDA 12 toolkit", d.fix());
    assertEquals(Status.FAIL, check(c, "CUDA runtime").status());
    assertEquals("this build needs the CUDA 13 runtime; install CUDA 13.x and put it first on LD_LIBRARY_PATH",
        check(c, "CUDA runtime").fix());
    assertEquals("install cuDNN 9 for CUDA 13 (libcudnn9-cuda-13); cuDNN 8 is not supported", check(c, "cuDNN").fix());
    assertEquals("NCCL 2.16.5 is too old: install NCCL 2.18+ built for CUDA 13", check(c, "NCCL").fix());
    assertEquals(Status.FAIL, check(c, "kernels").status());
    assertTrue(Doctor.failed(c));
  }

  @Test
  void noGpus() {
    DoctorFacts base = with(gpuHost(), 13000, "the CUDA driver sees no device (check CUDA_VISIBLE_DEVICES)", List.of(),
        "13.0", "9.14.0", "2.28.3", true);
    DoctorFacts f = new DoctorFacts(base.host(), base.executorId(), base.javaVersion(), base.javaVendor(),
        base.sparkVersion(), base.scalaVersion(), base.jcudaVersion(), base.cudaDriverVersion(), base.cudaProblem(),
        base.gpus(), "", base.cudaRuntime(), base.cudnn(), base.nccl(), base.librarySource(), base.jniProblem(),
        base.kernels(), base.taskGpus());
    Check g = check(Doctor.checks(f, true), "GPUs");
    assertEquals(Status.FAIL, g.status());
    assertEquals("none visible (CUDA_VISIBLE_DEVICES=)", g.found());
    assertEquals("the driver sees no GPU: check `nvidia-smi`; unset CUDA_VISIBLE_DEVICES or list the GPUs in it; "
        + "in a container run with --gpus all", g.fix());
    assertEquals(Status.SKIP, check(Doctor.checks(f, false), "GPUs").status());
  }

  /** Seen on an H100 host with CUDA_VISIBLE_DEVICES="": the driver is there, cuInit finds no device. */
  @Test
  void driverPresentButNoDeviceVisible() {
    DoctorFacts base = with(gpuHost(), 0, "cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is "
        + "detected) (no NVIDIA GPU visible; check CUDA_VISIBLE_DEVICES)", List.of(), "13.0.96", "9.14.0", "2.28.3",
        false);
    DoctorFacts f = new DoctorFacts(base.host(), base.executorId(), base.javaVersion(), base.javaVendor(),
        base.sparkVersion(), base.scalaVersion(), base.jcudaVersion(), 0, base.cudaProblem(), List.of(), "",
        base.cudaRuntime(), base.cudnn(), base.nccl(), "library files", "not loaded", false, null);
    List<Check> c = Doctor.checks(f, true);
    assertEquals(Status.OK, check(c, "NVIDIA driver").status());
    assertEquals("loaded (version unknown: cuInit found no device)", check(c, "NVIDIA driver").found());
    assertEquals(Status.FAIL, check(c, "GPUs").status());
    assertEquals("none visible (CUDA_VISIBLE_DEVICES=)", check(c, "GPUs").found());
    assertTrue(Doctor.verdict(f, c, true, true).contains("GPU training: not available here (no GPU: the driver "
        + "sees no GPU)"), Doctor.verdict(f, c, true, true));
  }

  @Test
  void javaSparkAndExecutorMismatches() {
    DoctorFacts old = new DoctorFacts("h", "1", "11.0.20", "Ubuntu", "3.5.1", "2.12.18", "12.6.0", 0, "none",
        List.of(), null, null, null, null, "library files", "x", false, "");
    Check j = Doctor.java(old);
    assertEquals(Status.FAIL, j.status());
    assertEquals("Spark 4 and this project run on Java 17 or 21: install JDK 17 and set JAVA_HOME (and "
        + "spark.executorEnv.JAVA_HOME on clusters)", j.fix());
    assertEquals("this jar is built for Scala 2.13: use a Spark distribution for Scala 2.13 (the default of Spark 4)",
        Doctor.spark(old).fix());
    DoctorFacts scala213 = new DoctorFacts("h", "1", "21.0.2", "x", "3.5.1", "2.13.8", null, 0, "none", List.of(),
        null, null, null, null, "library files", "x", false, "");
    assertEquals(Status.OK, Doctor.java(scala213).status());
    assertEquals("use Spark 4.1.x (this jar is built against 4.1.0; 4.0.x also works); Spark 3.x is not supported",
        Doctor.spark(scala213).fix());
    List<Check> c = Doctor.consistency(gpuHost(), old);
    assertEquals(2, c.size());
    assertEquals("Spark version 3.5.1 on the executor, 4.1.0 on the driver", c.get(0).found());
    assertEquals("Java major 11 on the executor, 17 on the driver", c.get(1).found());
    assertEquals(Status.FAIL, check(Doctor.checks(scala213, false), "JCuda").status());
  }

  @Test
  void versionParsing(@TempDir Path dir) throws Exception {
    assertEquals(17, Doctor.major("17.0.15"));
    assertEquals(8, Doctor.major("1.8.0_391"));
    assertTrue(Doctor.atLeast("2.28.3", new int[] {2, 18}));
    assertTrue(Doctor.atLeast("2.18", new int[] {2, 18}));
    assertFalse(Doctor.atLeast("2.9.9", new int[] {2, 18}));
    String[] v = DoctorFacts.fromDiagnose("JNI library: /x.so\nNCCL 2.28.3, cuBLASLt 130100, CUDA runtime 13000, "
        + "cuDNN 91400\n");
    assertEquals(List.of("13.0", "9.14.0", "2.28.3"), List.of(v));
    assertNull(DoctorFacts.fromDiagnose("NCCL 2.28.3, cuBLASLt 130100, CUDA runtime 13000, cuDNN not available (x)")[1]);
    Files.createFile(dir.resolve("libnccl.so.2.27.7"));
    Files.createSymbolicLink(dir.resolve("libnccl.so.2"), dir.resolve("libnccl.so.2.27.7"));
    Files.createFile(dir.resolve("libcudart.so.13"));
    assertEquals("2.27.7", DoctorFacts.versionOnDisk(List.of(dir), "libnccl.so"));
    assertEquals("13", DoctorFacts.versionOnDisk(List.of(dir), "libcudart.so"));
    assertNull(DoctorFacts.versionOnDisk(List.of(dir, dir.resolve("missing")), "libcudnn.so"));
  }

  @Test
  void factsSurviveJson() {
    DoctorFacts f = gpuHost().onExecutor("3", "0");
    assertEquals(f, DoctorFacts.fromJson(f.toJson()));
  }

  /** The real thing on this CPU-only machine: "no GPU", exit 0; with --gpu, exit 1. */
  @Test
  void runsOnThisMachineAndReportsNoGpuCleanly() {
    org.junit.jupiter.api.Assumptions.assumeFalse(dev.sparktrainer.cuda.Cuda.isAvailable(),
        "this machine has a GPU; the no-GPU path is covered by the fake environments");
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    int rc = Doctor.run(new String[0], new PrintStream(bytes, true, StandardCharsets.UTF_8));
    String out = bytes.toString(StandardCharsets.UTF_8);
    assertEquals(0, rc, out);
    assertTrue(out.contains("[OK  ] Java"), out);
    assertTrue(out.contains("[OK  ] Spark           4.1"), out);
    assertTrue(out.contains("[SKIP] NVIDIA driver   not found ("), out);
    assertTrue(out.contains("verdict: CPU training: ready; GPU training: not available here (no GPU: "), out);
    assertTrue(out.contains("supported: Java 17 or 21"), out);
    assertFalse(out.contains("Exception"), out);

    bytes.reset();
    assertEquals(1, Doctor.run(new String[] {"--gpu"}, new PrintStream(bytes, true, StandardCharsets.UTF_8)));
    assertTrue(bytes.toString(StandardCharsets.UTF_8).contains("[FAIL] NVIDIA driver"));
    assertEquals(2, Doctor.run(new String[] {"--bogus"}, new PrintStream(bytes, true, StandardCharsets.UTF_8)));
  }

  /** --master: a tiny job reports what the executors (here local[2] tasks) see. */
  @Test
  void checksWhatExecutorsSee() {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    int rc = Doctor.run(new String[] {"--master", "local[2]", "--tasks", "2"},
        new PrintStream(bytes, true, StandardCharsets.UTF_8));
    String out = bytes.toString(StandardCharsets.UTF_8);
    assertEquals(dev.sparktrainer.cuda.Cuda.isAvailable() ? rc : 0, rc, out);
    assertTrue(out.contains("executor driver ("), out); // local mode: the tasks run in the driver's executor
    assertTrue(out.contains("task GPUs: none"), out);
    assertEquals(1, out.split("executor driver \\(", -1).length - 1, "one line per executor: " + out);
  }
}
