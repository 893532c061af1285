package dev.sparktrainer.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** The spark-submit job file: the shipped template parses, and config mistakes get messages naming the key. */
class JobConfigTest {
  static final String MODEL = "\"model\": {\"input\": [4], \"layers\": [{\"type\": \"linear\", \"units\": 3}]}";

  static String fails(String json) {
    return assertThrows(IllegalArgumentException.class, () -> JobConfig.parse(json)).getMessage();
  }

  @Test
  void shippedTemplateParses() throws Exception {
    JobConfig c = JobConfig.load(Path.of("..", "conf", "fashion-mnist.json"));
    assertEquals("fashion-mnist", c.format);
    assertEquals(2, c.trainer.getNumWorkers());
    assertEquals(784, c.trainer.getModelSpec().inputSize());
    assertEquals(3, (int) c.trainer.trainerConfig().epochs());
    assertEquals(true, Files.exists(Path.of("..", "conf", "fashion-mnist.json")));
  }

  @Test
  void unknownTopLevelKey() {
    assertEquals("job file: unknown key 'trainig' (allowed: [data, model, output, training])",
        fails("{\"data\": {\"format\": \"parquet\", \"path\": \"x\"}, " + MODEL + ", \"trainig\": {}}"));
  }

  @Test
  void unknownTrainingKey() {
    assertEquals("training: unknown key 'epoch' (allowed: [accumulation, batchSize, checkpointInterval, "
        + "checkpointPath, clipNorm, device, dropLast, epochs, loss, nonFinite, numWorkers, optimizer, schedule, seed, "
        + "timeoutSeconds])",
        fails("{\"data\": {\"format\": \"parquet\", \"path\": \"x\"}, " + MODEL + ", \"training\": {\"epoch\": 3}}"));
  }

  @Test
  void wrongTypeForEpochs() {
    assertEquals("training.epochs must be an integer, got \"3\"",
        fails("{\"data\": {\"format\": \"parquet\", \"path\": \"x\"}, " + MODEL + ", \"training\": {\"epochs\": \"3\"}}"));
  }

  @Test
  void unknownFormat() {
    assertEquals("data.format must be fashion-mnist, parquet or csv, got 'orc'",
        fails("{\"data\": {\"format\": \"orc\", \"path\": \"x\"}, " + MODEL + "}"));
  }

  @Test
  void pathRequired() {
    assertEquals("data.path is required for format parquet", fails("{\"data\": {\"format\": \"parquet\"}, " + MODEL + "}"));
  }

  @Test
  void modelMissing() {
    assertEquals("job file: 'model' must be a JSON object",
        fails("{\"data\": {\"format\": \"parquet\", \"path\": \"x\"}}"));
  }

  @Test
  void badNonFinitePolicy() {
    String m = fails("{\"data\": {\"format\": \"parquet\", \"path\": \"x\"}, " + MODEL
        + ", \"training\": {\"nonFinite\": \"ignore\"}}");
    assertEquals(true, m.contains("nonFinite given invalid value ignore"), m);
  }

  @Test
  void impossibleCombinationNesterovWithoutMomentum() {
    assertEquals("optimizer: nesterov needs momentum > 0 (set momentum, e.g. 0.9)",
        fails("{\"data\": {\"format\": \"parquet\", \"path\": \"x\"}, " + MODEL
            + ", \"training\": {\"optimizer\": {\"type\": \"sgd\", \"lr\": 0.1, \"nesterov\": true}}}"));
  }

  @Test
  void notJson() {
    assertEquals(true, fails("{data: ").startsWith("job file: not valid JSON"));
  }
}
