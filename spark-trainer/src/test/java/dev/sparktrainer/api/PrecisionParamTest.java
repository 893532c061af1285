package dev.sparktrainer.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.train.EpochStats;
import java.util.List;
import org.apache.spark.ml.param.ParamMap;
import org.junit.jupiter.api.Test;

/** The precision and cudnnBenchmark params: defaults, values, errors; the summary's precision (no Spark). */
class PrecisionParamTest {

  @Test
  void defaultsAreFp32AndHeuristicCudnn() {
    SparkTrainer t = new SparkTrainer();
    assertEquals("fp32", t.getPrecision());
    assertEquals(false, t.getCudnnBenchmark());
    SparkTrainerModel m = new SparkTrainerModel("m", ModelSpec.mlp(2, new int[0], 2, "relu", 0f), Loss.CROSS_ENTROPY,
        new float[6], null);
    assertEquals("fp32", m.getPrecision());
  }

  @Test
  void settersTakeEveryPrecisionAndTheFlag() {
    for (String p : SparkTrainer.PRECISIONS) {
      assertEquals(p, new SparkTrainer().setPrecision(p).getPrecision());
    }
    assertEquals(true, new SparkTrainer().setCudnnBenchmark(true).getCudnnBenchmark());
  }

  @Test
  void badPrecisionFailsAtOnceNamingTheChoices() {
    String m = assertThrows(IllegalArgumentException.class, () -> new SparkTrainer().setPrecision("fp16"))
        .getMessage();
    assertTrue(m.startsWith("precision must be fp32, bf16 or auto, got 'fp16'"), m);
    assertThrows(IllegalArgumentException.class, () -> new SparkTrainer().setPrecision("BF16"));
    assertThrows(IllegalArgumentException.class, () -> new SparkTrainer().setPrecision(null));
    // Around the setter (a ParamMap, as fit(df, paramMap) or a loaded estimator do) Spark's validator refuses it.
    SparkTrainer t = new SparkTrainer();
    assertThrows(IllegalArgumentException.class, () -> t.copy(new ParamMap().put(t.precision(), "half")));
  }

  @Test
  void copiesKeepTheParams() {
    SparkTrainer t = new SparkTrainer().setPrecision("bf16").setCudnnBenchmark(true);
    SparkTrainer c = t.copy(new ParamMap());
    assertEquals("bf16", c.getPrecision());
    assertEquals(true, c.getCudnnBenchmark());
  }

  static TrainingSummary summary() {
    return new TrainingSummary(List.of(List.of(new EpochStats(0, 0, 100, 0.5, 0.8, 1.0, 0.1, 0.8, 0.1, 0))), 1.0,
        2.0, "cpu");
  }

  @Test
  void summaryCarriesThePrecisionThroughJson() {
    assertEquals("fp32", summary().precision());
    TrainingSummary s = summary().withBatchSize(10).withPrecision("bf16");
    assertEquals("bf16", s.precision());
    assertEquals("bf16", s.withBatchSize(20).withValidation(List.of()).precision(), "copies keep it");
    assertTrue(s.toString().contains("on 1 x cpu, precision bf16"), s.toString());
    TrainingSummary back = TrainingSummary.fromJson(s.toJson());
    assertEquals("bf16", back.precision());
    assertEquals(s.toJson(), back.toJson());
    // A summary written before the param has no "precision": every fit then trained in fp32.
    String old = s.toJson().replace("\"precision\" : \"bf16\",", "");
    assertTrue(!old.contains("precision"), old);
    assertEquals("fp32", TrainingSummary.fromJson(old).precision());
    assertThrows(IllegalArgumentException.class, () -> summary().withPrecision("auto"));
  }
}
