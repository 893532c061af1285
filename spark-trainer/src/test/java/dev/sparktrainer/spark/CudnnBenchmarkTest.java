package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.engine.DType;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * What a task does with cudnnBenchmark before its CUDA device exists (Note [cudnn benchmark per executor JVM])
 * and how it resolves precision; no GPU needed (the property is restored after each test).
 */
class CudnnBenchmarkTest {
  private String saved;

  @BeforeEach
  void save() {
    saved = System.getProperty(CudnnBenchmark.PROPERTY);
    System.clearProperty(CudnnBenchmark.PROPERTY);
  }

  @AfterEach
  void restore() {
    CudnnBenchmark.apply(false); // forget what a test set
    if (saved == null) {
      System.clearProperty(CudnnBenchmark.PROPERTY);
    } else {
      System.setProperty(CudnnBenchmark.PROPERTY, saved);
    }
  }

  @Test
  void trueSetsThePropertyAndALaterFalseFitClearsIt() {
    assertEquals(false, CudnnBenchmark.apply(false));
    assertNull(System.getProperty(CudnnBenchmark.PROPERTY));
    assertEquals(true, CudnnBenchmark.apply(true));
    assertEquals("true", System.getProperty(CudnnBenchmark.PROPERTY));
    assertEquals(false, CudnnBenchmark.apply(false), "a fit that asks for false clears what a fit set");
    assertNull(System.getProperty(CudnnBenchmark.PROPERTY));
  }

  @Test
  void falseLeavesTheExecutorsOwnOptionAlone() {
    System.setProperty(CudnnBenchmark.PROPERTY, "true"); // -Dsparktrainer.cudnn.benchmark=true on the executor
    assertEquals(true, CudnnBenchmark.apply(false));
    assertEquals(true, CudnnBenchmark.apply(true));
    assertEquals(true, CudnnBenchmark.apply(false));
    assertEquals("true", System.getProperty(CudnnBenchmark.PROPERTY));
  }

  @Test
  void aDeviceInitialisedWithTheOtherValueGetsAWarning() {
    assertNull(CudnnBenchmark.mismatch(true, true, true));
    assertNull(CudnnBenchmark.mismatch(false, false, false));
    assertNull(CudnnBenchmark.mismatch(true, true, null), "unknown: no check");
    String on = CudnnBenchmark.mismatch(true, true, false);
    assertTrue(on.startsWith("cudnnBenchmark=true is not in effect: this executor JVM created its first CUDA device "
        + "with sparktrainer.cudnn.benchmark=false"), on);
    assertTrue(on.contains("fresh executors") && on.contains("-Dsparktrainer.cudnn.benchmark=true"), on);
    String off = CudnnBenchmark.mismatch(false, false, true);
    assertTrue(off.contains("times the convolution algorithms") && off.contains("fresh executors"), off);
  }

  @Test
  void precisionResolvesPerDevice() {
    assertEquals("fp32", Backends.resolvePrecision("fp32", "cuda"));
    assertEquals("bf16", Backends.resolvePrecision("bf16", "cpu"));
    assertEquals("bf16", Backends.resolvePrecision("auto", "cuda"));
    assertEquals("fp32", Backends.resolvePrecision("auto", "cpu"));
    assertEquals(DType.BFLOAT16, Backends.computeDType("bf16"));
    assertEquals(DType.FLOAT32, Backends.computeDType("fp32"));
    assertThrows(IllegalArgumentException.class, () -> Backends.resolvePrecision("fp16", "cuda"));
    assertThrows(IllegalArgumentException.class, () -> Backends.computeDType("auto"));
  }
}
