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
    assertEquals("fp32", c.trainer.getPrecision());
    assertEquals(false, c.trainer.getCudnnBenchmark());
    assertEquals(true, Files.exists(Path.of("..", "conf", "fashion-mnist.json")));
  }

  @Test
  void shippedCnnTemplateTrainsInBf16OnGpusOnly() throws Exception {
    JobConfig c = JobConfig.load(Path.of("..", "conf", "fashion-mnist-cnn.json"));
    assertEquals("auto", c.trainer.getPrecision());
    assertEquals(false, c.trainer.getCudnnBenchmark());
  }

  static final String DATA = "\"data\": {\"format\": \"parquet\", \"path\": \"x\"}";

  static JobConfig training(String keys) {
    return JobConfig.parse("{" + DATA + ", " + MODEL + ", \"training\": {" + keys + "}}");
  }

  @Test
  void precisionAndCudnnBenchmark() {
    assertEquals("fp32", training("").trainer.getPrecision());
    assertEquals(false, training("").trainer.getCudnnBenchmark());
    JobConfig c = training("\"precision\": \"bf16\", \"cudnnBenchmark\": true");
    assertEquals("bf16", c.trainer.getPrecision());
    assertEquals(true, c.trainer.getCudnnBenchmark());
    assertEquals("auto", training("\"precision\": \"auto\"").trainer.getPrecision());
    assertEquals(false, training("").trainer.getCudaGraphs());
    assertEquals(true, training("\"cudaGraphs\": true").trainer.getCudaGraphs());
    assertEquals(false, training("").trainer.getShardOptimizer());
    assertEquals(true, training("\"shardOptimizer\": true").trainer.getShardOptimizer());
    assertEquals(false, training("").trainer.getCopyEngineCollectives());
    assertEquals(true, training("\"copyEngineCollectives\": true").trainer.getCopyEngineCollectives());
    assertEquals("auto", training("").trainer.getAllReduceMode());
    assertEquals("in_order", training("\"allReduceMode\": \"in_order\"").trainer.getAllReduceMode());
    assertEquals("overlapped", training("\"allReduceMode\": \"overlapped\"").trainer.getAllReduceMode());
    assertEquals(-1, training("").trainer.getGemmSmCarveout());
    assertEquals(0, training("\"gemmSmCarveout\": 0").trainer.getGemmSmCarveout());
    assertEquals(24, training("\"gemmSmCarveout\": 24").trainer.getGemmSmCarveout());
    assertEquals("fp32", training("").trainer.getGradientPrecision());
    assertEquals("fp32", training("\"gradientPrecision\": \"fp32\"").trainer.getGradientPrecision());
    assertEquals("bf16", training("\"gradientPrecision\": \"bf16\", \"precision\": \"bf16\"").trainer
        .getGradientPrecision());
  }

  @Test
  void badGradientPrecisionNamesTheChoices() {
    assertEquals("training.gradientPrecision must be fp32 or bf16, got 'fp16' (bf16: bf16 parameter gradients where "
        + "the model takes the fused linear path on cuda, else fp32)",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"gradientPrecision\": \"fp16\"}}"));
    assertEquals("training.gradientPrecision must be a string, got 16",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"gradientPrecision\": 16}}"));
    // The combination fails when the job file is read, before Spark starts.
    assertEquals("gradientPrecision bf16 needs accumulation 1, got accumulation 4 (a bf16 gradient would round the "
        + "micro-batches' sum at every micro-batch): set accumulation to 1 or gradientPrecision to fp32",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"gradientPrecision\": \"bf16\", \"accumulation\": 4}}"));
  }

  @Test
  void badGemmSmCarveoutSaysWhatIsAllowed() {
    assertEquals("training.gemmSmCarveout must be -1 (auto), 0 (none) or a number of SMs, got -2",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"gemmSmCarveout\": -2}}"));
    assertEquals("training.gemmSmCarveout must be an integer, got \"all\"",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"gemmSmCarveout\": \"all\"}}"));
  }

  @Test
  void badAllReduceModeNamesTheChoices() {
    assertEquals("training.allReduceMode must be auto, overlapped or in_order, got 'IN_ORDER' (overlapped: the "
        + "gradient all-reduce beside backward on its own stream; in_order: on the compute stream between "
        + "backward's kernels)", fails("{" + DATA + ", " + MODEL + ", \"training\": {\"allReduceMode\": \"IN_ORDER\"}}"));
  }

  @Test
  void badPrecisionNamesTheChoices() {
    assertEquals("training.precision must be fp32, bf16 or auto, got 'fp16' (bf16: mixed precision, bf16 "
        + "matmul/convolution inputs with fp32 master weights; auto: bf16 on cuda, fp32 on cpu)",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"precision\": \"fp16\"}}"));
    assertEquals("training.precision must be a string, got 16",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"precision\": 16}}"));
    assertEquals("training.cudnnBenchmark must be true or false, got \"yes\"",
        fails("{" + DATA + ", " + MODEL + ", \"training\": {\"cudnnBenchmark\": \"yes\"}}"));
  }

  static JobConfig data(String extra) {
    return JobConfig.parse("{\"data\": {\"format\": \"parquet\", \"path\": \"x\", " + extra + "}, " + MODEL + "}");
  }

  @Test
  void validationSetFromAPathAFractionOrAnIndicatorColumn() {
    JobConfig none = JobConfig.parse("{" + DATA + ", " + MODEL + "}");
    assertEquals(null, none.validationPath);
    assertEquals(0.0, none.validationFraction);
    assertEquals("", none.trainer.getValidationIndicatorCol());

    JobConfig path = data("\"validationPath\": \"val.parquet\"");
    assertEquals("val.parquet", path.validationPath);
    assertEquals("", path.trainer.getValidationIndicatorCol());

    JobConfig fraction = data("\"validationFraction\": 0.1");
    assertEquals(0.1, fraction.validationFraction);
    assertEquals(JobConfig.SPLIT_COL, fraction.trainer.getValidationIndicatorCol());

    JobConfig indicator = data("\"validationIndicatorCol\": \"is_val\"");
    assertEquals("is_val", indicator.trainer.getValidationIndicatorCol());
    assertEquals(0.0, indicator.validationFraction);
  }

  @Test
  void validationMistakes() {
    assertEquals("data: give at most one of validationPath, validationFraction and validationIndicatorCol (they all "
        + "name the validation set)", assertThrows(IllegalArgumentException.class,
            () -> data("\"validationPath\": \"v\", \"validationFraction\": 0.1")).getMessage());
    assertEquals("data.validationFraction must be between 0 and 1 (exclusive), got 1.5",
        assertThrows(IllegalArgumentException.class, () -> data("\"validationFraction\": 1.5")).getMessage());
    assertEquals("data.validationFraction must be between 0 and 1 (exclusive), got 0",
        assertThrows(IllegalArgumentException.class, () -> data("\"validationFraction\": 0")).getMessage());
    assertEquals("data.validationFraction must be a number, got \"10%\"",
        assertThrows(IllegalArgumentException.class, () -> data("\"validationFraction\": \"10%\"")).getMessage());
    assertEquals("data.validationPath does not apply to format fashion-mnist (its test set is read from data.path); "
        + "use data.validationFraction, e.g. 0.1, to hold out training rows",
        fails("{\"data\": {\"format\": \"fashion-mnist\", \"validationPath\": \"v\"}, " + MODEL + "}"));
  }

  @Test
  void unknownTopLevelKey() {
    assertEquals("job file: unknown key 'trainig' (allowed: [data, model, output, training])",
        fails("{\"data\": {\"format\": \"parquet\", \"path\": \"x\"}, " + MODEL + ", \"trainig\": {}}"));
  }

  @Test
  void unknownTrainingKey() {
    assertEquals("training: unknown key 'epoch' (allowed: [accumulation, allReduceMode, batchSize, checkpointInterval, "
        + "checkpointPath, clipNorm, copyEngineCollectives, cudaGraphs, cudnnBenchmark, device, dropLast, epochs, "
        + "gemmSmCarveout, "
        + "gradientPrecision, loss, nonFinite, numWorkers, optimizer, "
        + "precision, schedule, seed, shardOptimizer, timeoutSeconds])",
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
