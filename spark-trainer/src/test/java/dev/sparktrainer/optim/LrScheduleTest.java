package dev.sparktrainer.optim;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import org.junit.jupiter.api.Test;

/** Learning-rate schedules: values at given steps computed by hand, JSON round trips, and bad JSON. */
class LrScheduleTest {
  private static final double EPS = 1e-12;

  @Test
  void constantIsTheBaseRateAtEveryStep() {
    LrSchedule s = LrSchedule.constant();
    assertEquals(0.1, s.lr(0.1, 0), EPS);
    assertEquals(0.1, s.lr(0.1, 1), EPS);
    assertEquals(0.1, s.lr(0.1, 1_000_000), EPS);
    assertEquals(LrSchedule.Type.CONSTANT, s.type());
  }

  @Test
  void stepDecayMultipliesByGammaEveryStepSizeSteps() {
    LrSchedule s = LrSchedule.step(10, 0.5);
    assertEquals(0.2, s.lr(0.2, 0), EPS);
    assertEquals(0.2, s.lr(0.2, 9), EPS);
    assertEquals(0.1, s.lr(0.2, 10), EPS);
    assertEquals(0.1, s.lr(0.2, 19), EPS);
    assertEquals(0.05, s.lr(0.2, 20), EPS);
    assertEquals(0.2 * Math.pow(0.5, 10), s.lr(0.2, 105), EPS);
  }

  @Test
  void warmupThenCosine() {
    // Warmup 4 steps: lr * (t + 1) / 4; then cosine over totalSteps - warmup = 10 steps from 1.0 to minLr 0.01.
    LrSchedule s = LrSchedule.warmupCosine(4, 14, 0.01);
    assertEquals(0.25, s.lr(1.0, 0), EPS);
    assertEquals(0.5, s.lr(1.0, 1), EPS);
    assertEquals(0.75, s.lr(1.0, 2), EPS);
    assertEquals(1.0, s.lr(1.0, 3), EPS);
    assertEquals(1.0, s.lr(1.0, 4), EPS); // progress 0
    // progress 0.5: 0.01 + 0.99 * 0.5 * (1 + cos(pi / 2)) = 0.505
    assertEquals(0.505, s.lr(1.0, 9), EPS);
    // progress 0.2: 0.01 + 0.99 * 0.5 * (1 + cos(0.2 pi))
    assertEquals(0.01 + 0.99 * 0.5 * (1 + Math.cos(0.2 * Math.PI)), s.lr(1.0, 6), EPS);
    assertEquals(0.01, s.lr(1.0, 14), EPS); // progress 1
    assertEquals(0.01, s.lr(1.0, 1000), EPS); // stays at minLr after the end
  }

  @Test
  void cosineWithoutWarmup() {
    LrSchedule s = LrSchedule.warmupCosine(0, 4, 0);
    assertEquals(2.0, s.lr(2.0, 0), EPS);
    assertEquals(1.0 + Math.cos(Math.PI / 4), s.lr(2.0, 1), EPS);
    assertEquals(1.0, s.lr(2.0, 2), EPS);
    assertEquals(0.0, s.lr(2.0, 4), EPS);
  }

  @Test
  void withDefaultTotalFillsOnlyAnUnsetCosineTotal() {
    LrSchedule unset = LrSchedule.warmupCosine(2, 0, 0);
    LrSchedule filled = unset.withDefaultTotal(12);
    assertEquals(LrSchedule.warmupCosine(2, 12, 0), filled);
    assertEquals(0.5, filled.lr(1.0, 7), EPS); // progress 5/10
    LrSchedule set = LrSchedule.warmupCosine(2, 20, 0);
    assertSame(set, set.withDefaultTotal(12));
    LrSchedule step = LrSchedule.step(3, 0.1);
    assertSame(step, step.withDefaultTotal(12));
  }

  @Test
  void jsonRoundTrip() throws Exception {
    for (LrSchedule s : new LrSchedule[] {
        LrSchedule.constant(), LrSchedule.step(7, 0.3), LrSchedule.warmupCosine(100, 1000, 1e-5)}) {
      LrSchedule back = LrSchedule.fromJson(s.toJson());
      assertEquals(s, back, s.toJson());
      assertEquals(s.toJson(), back.toJson());
      for (long t : new long[] {0, 5, 99, 100, 550, 2000}) {
        assertEquals(s.lr(0.1, t), back.lr(0.1, t), 0.0, s + " at " + t);
      }
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
        out.writeObject(s);
      }
      try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(bytes.toByteArray()))) {
        assertEquals(s, in.readObject(), "java serialization");
      }
    }
    assertEquals("{\"type\":\"step\",\"stepSize\":7,\"gamma\":0.3}", LrSchedule.step(7, 0.3).toJson());
    assertEquals(LrSchedule.warmupCosine(10, 0, 0),
        LrSchedule.fromJson("{\"type\": \"COSINE\", \"warmupSteps\": 10}"));
    assertEquals(LrSchedule.step(5, 0.1), LrSchedule.fromJson("{\"type\": \"step\", \"stepSize\": 5}"));
    assertNotEquals(LrSchedule.step(5, 0.1), LrSchedule.step(5, 0.2));
  }

  private static String error(String json) {
    return assertThrows(IllegalArgumentException.class, () -> LrSchedule.fromJson(json)).getMessage();
  }

  @Test
  void badJsonNamesTheKey() {
    assertEquals("schedule: unknown key 'warmup' for cosine (allowed: [minLr, totalSteps, type, warmupSteps])",
        error("{\"type\": \"cosine\", \"warmup\": 10}"));
    assertEquals("schedule: unknown key 'gamma' for constant (allowed: [type])",
        error("{\"type\": \"constant\", \"gamma\": 0.5}"));
    // A misspelt required key is reported as unknown, not as the missing key's default failing validation.
    assertEquals("schedule: unknown key 'stepsize' for step (allowed: [gamma, stepSize, type])",
        error("{\"type\": \"step\", \"stepsize\": 10}"));
    assertEquals("schedule.stepSize must be an integer, got \"10\"",
        error("{\"type\": \"step\", \"stepSize\": \"10\"}"));
    assertEquals("schedule.stepSize must be an integer, got 2.5",
        error("{\"type\": \"step\", \"stepSize\": 2.5}"));
    assertEquals("schedule.gamma must be a number, got \"half\"",
        error("{\"type\": \"step\", \"stepSize\": 2, \"gamma\": \"half\"}"));
    assertEquals("schedule.minLr must be a number, got true", error("{\"type\": \"cosine\", \"minLr\": true}"));
    assertEquals("schedule.warmupSteps must be an integer, got null",
        error("{\"type\": \"cosine\", \"warmupSteps\": null}"));
    assertEquals("schedule: unknown type 'linear' (use constant, step or cosine)", error("{\"type\": \"linear\"}"));
    assertEquals("schedule: expected an object with 'type' (constant, step or cosine)", error("{\"stepSize\": 3}"));
    assertEquals("schedule: expected an object with 'type' (constant, step or cosine)", error("[1, 2]"));
    assertEquals("schedule: step needs stepSize > 0, got 0", error("{\"type\": \"step\", \"stepSize\": 0}"));
    assertEquals("schedule: gamma must be > 0, warmupSteps/totalSteps/minLr >= 0",
        error("{\"type\": \"cosine\", \"warmupSteps\": -1}"));
    String notJson = error("{\"type\": ");
    assertEquals(true, notJson.startsWith("schedule: not valid JSON: "), notJson);
  }
}
