package dev.sparktrainer.optim;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/** OptimizerConfig: PyTorch defaults, JSON round trips, and validation messages that name the field. */
class OptimizerConfigTest {

  private static String error(Executable e) {
    return assertThrows(IllegalArgumentException.class, e).getMessage();
  }

  private static String jsonError(String json) {
    return error(() -> OptimizerConfig.fromJson(json));
  }

  @Test
  void defaultsFollowPyTorch() {
    OptimizerConfig sgd = OptimizerConfig.sgd(0.1);
    assertEquals(0.0, sgd.momentum());
    assertEquals(0.0, sgd.weightDecay());
    assertEquals(false, sgd.nesterov());
    OptimizerConfig adamw = OptimizerConfig.adamw(1e-3);
    assertEquals(0.9, adamw.beta1());
    assertEquals(0.999, adamw.beta2());
    assertEquals(1e-8, adamw.eps());
    assertEquals(0.01, adamw.weightDecay());
  }

  @Test
  void jsonRoundTrip() {
    for (OptimizerConfig c : new OptimizerConfig[] {
        OptimizerConfig.sgd(0.1), OptimizerConfig.sgd(0.05).withMomentum(0.9).withNesterov(true).withWeightDecay(1e-4),
        OptimizerConfig.adamw(3e-4).withBetas(0.8, 0.95).withEps(1e-6).withWeightDecay(0.1)}) {
      OptimizerConfig back = OptimizerConfig.fromJson(c.toJson());
      assertEquals(c, back, c.toJson());
      assertEquals(c.type(), back.type());
      assertEquals(c.lr(), back.lr());
      assertEquals(c.momentum(), back.momentum());
      assertEquals(c.nesterov(), back.nesterov());
      assertEquals(c.weightDecay(), back.weightDecay());
      assertEquals(c.beta1(), back.beta1());
      assertEquals(c.beta2(), back.beta2());
      assertEquals(c.eps(), back.eps());
    }
    assertEquals(OptimizerConfig.sgd(0.1).withMomentum(0.9).withNesterov(true),
        OptimizerConfig.fromJson("{\"type\": \"sgd\", \"lr\": 0.1, \"momentum\": 0.9, \"nesterov\": true}"));
    assertEquals(OptimizerConfig.adamw(1e-3), OptimizerConfig.fromJson("{\"type\": \"AdamW\"}"));
  }

  @Test
  void validationMessages() {
    assertEquals("optimizer: lr must be a finite number > 0, got 0.0", error(() -> OptimizerConfig.sgd(0)));
    assertEquals("optimizer: momentum must be in [0, 1), got 1.0",
        error(() -> OptimizerConfig.sgd(0.1).withMomentum(1)));
    assertEquals("optimizer: nesterov needs momentum > 0 (set momentum, e.g. 0.9)",
        error(() -> OptimizerConfig.sgd(0.1).withNesterov(true)));
    assertEquals("optimizer: betas must be in [0, 1), got (0.9, 1.0)",
        error(() -> OptimizerConfig.adamw(0.1).withBetas(0.9, 1.0)));
    assertEquals("optimizer: eps must be > 0, got 0.0", error(() -> OptimizerConfig.adamw(0.1).withEps(0)));
    assertEquals("optimizer: weightDecay must be >= 0, got -1.0",
        error(() -> OptimizerConfig.adamw(0.1).withWeightDecay(-1)));
  }

  @Test
  void badJsonNamesTheKey() {
    assertEquals("optimizer: unknown key 'betas' for sgd (allowed: [lr, momentum, nesterov, type, weightDecay])",
        jsonError("{\"type\": \"sgd\", \"betas\": [0.9, 0.99]}"));
    // A misspelt key is reported as unknown, not as a validation error of the value it was meant to set.
    assertEquals("optimizer: unknown key 'momentun' for sgd (allowed: [lr, momentum, nesterov, type, weightDecay])",
        jsonError("{\"type\": \"sgd\", \"momentun\": 0.9, \"nesterov\": true}"));
    assertEquals("optimizer: unknown key 'momentum' for adamw (allowed: [betas, eps, lr, type, weightDecay])",
        jsonError("{\"type\": \"adamw\", \"momentum\": 0.9}"));
    assertEquals("optimizer.lr must be a number, got \"0.1\"", jsonError("{\"type\": \"sgd\", \"lr\": \"0.1\"}"));
    assertEquals("optimizer.nesterov must be true or false",
        jsonError("{\"type\": \"sgd\", \"momentum\": 0.9, \"nesterov\": 1}"));
    assertEquals("optimizer.betas must be two numbers, e.g. [0.9, 0.999]",
        jsonError("{\"type\": \"adamw\", \"betas\": [0.9]}"));
    assertEquals("optimizer: unknown type 'lamb' (use sgd or adamw)", jsonError("{\"type\": \"lamb\"}"));
    assertEquals("optimizer: expected an object with 'type' (sgd or adamw)", jsonError("{\"lr\": 0.1}"));
  }
}
