package dev.sparktrainer.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.sparktrainer.api.SparkTrainer;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.Set;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.functions;

/**
 * The job file of the spark-submit app (JSON): where the data is, the model, and how to train.
 *
 * <pre>{
 *   "data":     {"format": "fashion-mnist" | "parquet" | "csv", "path": "...", "testPath": "...",
 *                "featuresCol": "features", "featureCols": ["a", "b"], "labelCol": "label",
 *                "validationPath": "..." | "validationFraction": 0.1 | "validationIndicatorCol": "is_val"},
 *   "model":    { ModelSpec JSON },
 *   "training": {"epochs": 3, "batchSize": 128, "numWorkers": 2, "device": "auto", "seed": 42,
 *                "optimizer": {...}, "schedule": {...}, "loss": "cross_entropy", "clipNorm": 0,
 *                "accumulation": 1, "dropLast": false, "checkpointPath": "", "checkpointInterval": 0,
 *                "timeoutSeconds": 300, "nonFinite": "fail", "precision": "fp32", "cudnnBenchmark": false,
 *                "cudaGraphs": false, "allReduceMode": "auto", "gemmSmCarveout": -1,
 *                "gradientPrecision": "fp32"},
 *   "output":   {"modelPath": "..."}
 * }</pre>
 *
 * A validation set (evaluated after every epoch, reported in the summary) comes from at most one of: {@code
 * validationPath} (a second dataset in {@code format}; not for fashion-mnist), {@code validationFraction} (that
 * share of the training rows, drawn with the training seed and held out of training), or {@code
 * validationIndicatorCol} (a boolean column of the training data, as the estimator's param). Unknown keys and
 * wrong types are errors that name the key.
 */
public final class JobConfig {
  private static final ObjectMapper JSON = new ObjectMapper();
  /** The boolean column {@link #withValidationSplit} adds: true for the held-out validation rows. */
  public static final String SPLIT_COL = "__sparktrainer_validation";

  public final String format;
  public final String path;
  public final String testPath;
  /** A validation dataset in {@link #format}, or null. */
  public final String validationPath;
  /** The share of training rows held out for validation, in (0, 1); 0: none. */
  public final double validationFraction;
  public final String modelPath;
  public final JsonNode data;
  public final SparkTrainer trainer;

  private JobConfig(JsonNode root) {
    keys(root, "job file", Set.of("data", "model", "training", "output"));
    data = object(root, "data");
    keys(data, "data", Set.of("format", "path", "testPath", "featuresCol", "featureCols", "labelCol",
        "validationPath", "validationFraction", "validationIndicatorCol"));
    format = text(data, "data", "format", "parquet");
    if (!Set.of("fashion-mnist", "parquet", "csv").contains(format)) {
      throw new IllegalArgumentException("data.format must be fashion-mnist, parquet or csv, got '" + format + "'");
    }
    path = text(data, "data", "path", format.equals("fashion-mnist") ? "/usr/share/datasets/fashion-mnist" : null);
    if (path == null) {
      throw new IllegalArgumentException("data.path is required for format " + format);
    }
    testPath = text(data, "data", "testPath", null);
    validationPath = text(data, "data", "validationPath", null);
    validationFraction = data.has("validationFraction") ? number(data, "data", "validationFraction") : 0;
    String indicator = text(data, "data", "validationIndicatorCol", null);
    int validationKeys = (validationPath != null ? 1 : 0) + (data.has("validationFraction") ? 1 : 0)
        + (indicator != null ? 1 : 0);
    if (validationKeys > 1) {
      throw new IllegalArgumentException("data: give at most one of validationPath, validationFraction and "
          + "validationIndicatorCol (they all name the validation set)");
    }
    if (validationPath != null && format.equals("fashion-mnist")) {
      throw new IllegalArgumentException("data.validationPath does not apply to format fashion-mnist (its test set "
          + "is read from data.path); use data.validationFraction, e.g. 0.1, to hold out training rows");
    }
    if (data.has("validationFraction") && !(validationFraction > 0 && validationFraction < 1)) {
      throw new IllegalArgumentException("data.validationFraction must be between 0 and 1 (exclusive), got "
          + data.get("validationFraction"));
    }
    JsonNode model = object(root, "model");
    JsonNode out = root.has("output") ? object(root, "output") : JSON.createObjectNode();
    keys(out, "output", Set.of("modelPath"));
    modelPath = text(out, "output", "modelPath", null);

    SparkTrainer t = new SparkTrainer().setModelSpec(model.toString());
    t.setFeaturesCol(text(data, "data", "featuresCol", "features"));
    t.setLabelCol(text(data, "data", "labelCol", "label"));
    if (indicator != null) {
      t.setValidationIndicatorCol(indicator);
    } else if (validationFraction > 0) {
      t.setValidationIndicatorCol(SPLIT_COL);
    }
    if (data.has("featureCols")) {
      JsonNode fc = data.get("featureCols");
      if (!fc.isArray()) {
        throw new IllegalArgumentException("data.featureCols must be an array of column names");
      }
      String[] cols = new String[fc.size()];
      for (int i = 0; i < cols.length; i++) {
        cols[i] = fc.get(i).asText();
      }
      t.setFeatureCols(cols);
    }
    JsonNode tr = root.has("training") ? object(root, "training") : JSON.createObjectNode();
    keys(tr, "training", Set.of("epochs", "batchSize", "numWorkers", "device", "seed", "optimizer", "schedule",
        "loss", "clipNorm", "accumulation", "dropLast", "checkpointPath", "checkpointInterval", "timeoutSeconds",
        "nonFinite", "precision", "cudnnBenchmark", "cudaGraphs", "allReduceMode",
        "gemmSmCarveout", "gradientPrecision", "shardOptimizer", "copyEngineCollectives"));
    if (tr.has("epochs")) {
      t.setEpochs(integer(tr, "epochs"));
    }
    if (tr.has("batchSize")) {
      t.setBatchSize(integer(tr, "batchSize"));
    }
    if (tr.has("numWorkers")) {
      t.setNumWorkers(integer(tr, "numWorkers"));
    }
    if (tr.has("device")) {
      t.setDevice(text(tr, "training", "device", "auto"));
    }
    if (tr.has("seed")) {
      t.setSeed(tr.get("seed").asLong());
    }
    if (tr.has("optimizer")) {
      t.setOptimizer(object(tr, "optimizer").toString());
    }
    if (tr.has("schedule")) {
      t.setSchedule(object(tr, "schedule").toString());
    }
    if (tr.has("loss")) {
      t.setLoss(text(tr, "training", "loss", "cross_entropy"));
    }
    if (tr.has("clipNorm")) {
      t.setClipNorm(tr.get("clipNorm").asDouble());
    }
    if (tr.has("accumulation")) {
      t.setAccumulation(integer(tr, "accumulation"));
    }
    if (tr.has("dropLast")) {
      t.setDropLast(tr.get("dropLast").asBoolean());
    }
    if (tr.has("checkpointPath")) {
      t.setCheckpointPath(text(tr, "training", "checkpointPath", ""));
    }
    if (tr.has("checkpointInterval")) {
      t.setCheckpointInterval(integer(tr, "checkpointInterval"));
    }
    if (tr.has("nonFinite")) {
      t.setNonFinite(text(tr, "training", "nonFinite", "fail"));
    }
    if (tr.has("timeoutSeconds")) {
      t.setTimeoutSeconds(integer(tr, "timeoutSeconds"));
    }
    if (tr.has("precision")) {
      choice(t::setPrecision, text(tr, "training", "precision", "fp32"));
    }
    if (tr.has("cudnnBenchmark")) {
      t.setCudnnBenchmark(bool(tr, "training", "cudnnBenchmark"));
    }
    if (tr.has("cudaGraphs")) {
      t.setCudaGraphs(bool(tr, "training", "cudaGraphs"));
    }
    if (tr.has("allReduceMode")) {
      choice(t::setAllReduceMode, text(tr, "training", "allReduceMode", "auto"));
    }
    if (tr.has("gemmSmCarveout")) {
      int sms = integer(tr, "gemmSmCarveout");
      if (sms < -1) {
        throw new IllegalArgumentException("training.gemmSmCarveout must be -1 (auto), 0 (none) or a number of SMs, got "
            + sms);
      }
      t.setGemmSmCarveout(sms);
    }
    if (tr.has("gradientPrecision")) {
      choice(t::setGradientPrecision, text(tr, "training", "gradientPrecision", "fp32"));
    }
    if (tr.has("shardOptimizer")) {
      t.setShardOptimizer(bool(tr, "training", "shardOptimizer"));
    }
    if (tr.has("copyEngineCollectives")) {
      t.setCopyEngineCollectives(bool(tr, "training", "copyEngineCollectives"));
    }
    t.trainerConfig(); // validates the combination now, before Spark starts
    trainer = t;
  }

  /**
   * The training rows with the validation split column that {@code validationFraction} asks for (rows where
   * it is true are held out; drawn with the training seed, so the same rows on every run over the same input
   * partitions), or {@code train} unchanged when there is no fraction.
   */
  public Dataset<Row> withValidationSplit(Dataset<Row> train) {
    if (validationFraction <= 0) {
      return train;
    }
    if (java.util.Arrays.asList(train.columns()).contains(SPLIT_COL)) {
      throw new IllegalArgumentException("the training data already has a column named " + SPLIT_COL
          + "; rename it (data.validationFraction adds that column)");
    }
    return train.withColumn(SPLIT_COL, functions.rand(trainer.trainerConfig().seed()).lt(validationFraction));
  }

  public static JobConfig parse(String json) {
    try {
      return new JobConfig(JSON.readTree(json));
    } catch (IOException e) {
      throw new IllegalArgumentException("job file: not valid JSON: " + e.getMessage(), e);
    }
  }

  public static JobConfig load(Path file) throws IOException {
    return parse(Files.readString(file));
  }

  private static JsonNode object(JsonNode n, String key) {
    JsonNode v = n.get(key);
    if (v == null || !v.isObject()) {
      throw new IllegalArgumentException("job file: '" + key + "' must be a JSON object");
    }
    return v;
  }

  /** Sets a training choice; the setter's error for a bad value gets the key's "training." prefix. */
  private static void choice(java.util.function.Consumer<String> setter, String value) {
    try {
      setter.accept(value);
    } catch (IllegalArgumentException e) {
      throw new IllegalArgumentException("training." + e.getMessage(), e);
    }
  }

  private static String text(JsonNode n, String where, String key, String dflt) {
    JsonNode v = n.get(key);
    if (v == null) {
      return dflt;
    }
    if (!v.isTextual()) {
      throw new IllegalArgumentException(where + "." + key + " must be a string, got " + v);
    }
    return v.asText();
  }

  private static double number(JsonNode n, String where, String key) {
    JsonNode v = n.get(key);
    if (!v.isNumber()) {
      throw new IllegalArgumentException(where + "." + key + " must be a number, got " + v);
    }
    return v.asDouble();
  }

  private static boolean bool(JsonNode n, String where, String key) {
    JsonNode v = n.get(key);
    if (!v.isBoolean()) {
      throw new IllegalArgumentException(where + "." + key + " must be true or false, got " + v);
    }
    return v.asBoolean();
  }

  private static int integer(JsonNode n, String key) {
    JsonNode v = n.get(key);
    if (!v.isIntegralNumber() || !v.canConvertToInt()) {
      throw new IllegalArgumentException("training." + key + " must be an integer, got " + v);
    }
    return v.asInt();
  }

  private static void keys(JsonNode n, String where, Set<String> allowed) {
    if (n == null || !n.isObject()) {
      throw new IllegalArgumentException(where + " must be a JSON object");
    }
    for (Iterator<String> it = n.fieldNames(); it.hasNext(); ) {
      String k = it.next();
      if (!allowed.contains(k)) {
        throw new IllegalArgumentException(where + ": unknown key '" + k + "' (allowed: " + new java.util.TreeSet<>(allowed) + ")");
      }
    }
  }
}
