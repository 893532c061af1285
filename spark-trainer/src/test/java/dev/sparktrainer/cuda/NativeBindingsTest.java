package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * The JNI library is only compiled on the GPU machine, so a native declared in {@link Native} without its C
 * function (or the reverse) would surface there as an UnsatisfiedLinkError. This test compares the two lists
 * here, in CI, from the source: every {@code native} method of Native has one {@code
 * Java_dev_sparktrainer_cuda_Native_<name>} in native/jni/sparktrainer_jni.cpp and nothing else is exported.
 */
class NativeBindingsTest {
  /** The repository root: the working folder is spark-trainer/ under Maven, the root on the GPU machine. */
  static Path repo() {
    Path here = Path.of("").toAbsolutePath();
    Path root = Files.isDirectory(here.resolve("native")) ? here : here.getParent();
    assumeTrue(root != null && Files.isDirectory(root.resolve("native")),
        "the sources are not here (" + here + "): nothing to compare");
    return root;
  }

  @Test
  void everyJavaNativeHasItsJniFunctionAndViceVersa() throws Exception {
    Path src = repo().resolve(Path.of("native", "jni", "sparktrainer_jni.cpp"));
    String cpp = Files.readString(src);
    TreeSet<String> exported = new TreeSet<>();
    Matcher m = Pattern.compile("JNIEXPORT\\s+\\w+\\s+JNICALL\\s+Java_dev_sparktrainer_cuda_Native_(\\w+)\\s*\\(")
        .matcher(cpp);
    while (m.find()) {
      exported.add(m.group(1));
    }
    TreeSet<String> declared = new TreeSet<>();
    for (Method method : Native.class.getDeclaredMethods()) {
      if (Modifier.isNative(method.getModifiers())) {
        declared.add(method.getName());
      }
    }
    long overloads = Arrays.stream(Native.class.getDeclaredMethods())
        .filter(x -> Modifier.isNative(x.getModifiers())).count();
    assertEquals(declared.size(), overloads, "overloaded natives need mangled JNI names; keep one name per native");
    assertEquals(declared, exported, "Native.java and " + src + " disagree");
  }

  /**
   * Every kernel the Java side names (a {@code "st_..."} literal in the cuda package) is in {@link Kernels#NAMES}
   * (looked up at load time) and defined in native/kernels, so a kernel added on one side only fails here instead
   * of on the GPU machine.
   */
  @Test
  void everyLaunchedKernelIsListedAndDefined() throws Exception {
    TreeSet<String> defined = new TreeSet<>();
    try (var files = Files.list(repo().resolve(Path.of("native", "kernels")))) {
      for (Path f : files.toList()) {
        Matcher m = Pattern.compile("extern \"C\" __global__ void\\s+(?:__launch_bounds__\\([^)]*\\)\\s+)?(\\w+)\\(").matcher(Files.readString(f));
        while (m.find()) {
          defined.add(m.group(1));
        }
      }
    }
    TreeSet<String> launched = new TreeSet<>();
    try (var files = Files.list(repo().resolve(Path.of("spark-trainer", "src", "main", "java", "dev", "sparktrainer",
        "cuda")))) {
      for (Path f : files.toList()) {
        if (f.getFileName().toString().equals("Kernels.java")) {
          continue;
        }
        // every "st_..." literal: launch("st_x") and the names passed through helpers (actBackwardColsum("st_x", ...))
        Matcher m = Pattern.compile("\"(st_\\w+)\"").matcher(Files.readString(f));
        while (m.find()) {
          launched.add(m.group(1));
        }
      }
    }
    TreeSet<String> listed = new TreeSet<>(Kernels.NAMES);
    TreeSet<String> missing = new TreeSet<>(launched);
    missing.removeAll(listed);
    assertEquals(new TreeSet<String>(), missing, "launched but not in Kernels.NAMES");
    TreeSet<String> undefined = new TreeSet<>(listed);
    undefined.removeAll(defined);
    assertEquals(new TreeSet<String>(), undefined, "in Kernels.NAMES but not defined in native/kernels");
  }

  /**
   * The statuses CudaDevice and BlasLt answer without throwing (Note [cuDNN workspace], Note [cuBLASLt workspace])
   * carry the codes the JNI library returns for them, and no two of the library's codes share a number, so a
   * renumbering on one side fails here instead of as an exception on the GPU machine.
   */
  @Test
  void answeredStatusesCarryTheJniLibrarysCodes() throws Exception {
    String cpp = Files.readString(repo().resolve(Path.of("native", "jni", "sparktrainer_jni.cpp")));
    java.util.Map<String, Integer> codes = new java.util.TreeMap<>();
    Matcher m = Pattern.compile("constexpr int (JNI_\\w+) = (\\d+);").matcher(cpp);
    while (m.find()) {
      codes.put(m.group(1), Integer.parseInt(m.group(2)));
    }
    Matcher lib = Pattern.compile("constexpr int LIB_JNI = (\\d+);").matcher(cpp);
    assertTrue(lib.find(), "no LIB_JNI in the JNI source");
    assertEquals(Native.LIB_JNI, Integer.parseInt(lib.group(1)));
    assertEquals(Native.NO_CUDNN_ENGINE, (Native.LIB_JNI << 24) | codes.getOrDefault("JNI_NO_CUDNN_ENGINE", -1));
    assertEquals(Native.CUDNN_WORKSPACE_TOO_SMALL, (Native.LIB_JNI << 24) | codes.getOrDefault("JNI_CUDNN_WORKSPACE", -1));
    assertEquals(Native.CUDNN_TRIAL_WORKSPACE, (Native.LIB_JNI << 24) | codes.getOrDefault("JNI_CUDNN_TRIAL_WORKSPACE", -1));
    assertEquals(Native.CUBLASLT_WORKSPACE_TOO_SMALL,
        (Native.LIB_JNI << 24) | codes.getOrDefault("JNI_CUBLASLT_WORKSPACE", -1));
    assertEquals(codes.size(), new java.util.HashSet<>(codes.values()).size(),
        "two JNI codes share a number: " + codes);
  }
}
