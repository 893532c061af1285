package dev.sparktrainer.api;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.train.EpochStats;
import java.io.IOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;

/**
 * What a fit reports: per-epoch loss and accuracy (mean over all ranks' samples; validation loss and accuracy
 * when a validation set was evaluated), global throughput, every rank's timing breakdown (data wait, compute,
 * communication), peak device memory per rank when the device reports it, the straggler report, and the
 * time from {@code fit()} to the first training step.
 *
 * <p>{@link #save(String)} writes it as {@code summary.json}, {@code epochs.csv}, {@code ranks.csv} and a PNG
 * chart of the curves (see {@link SummaryFiles}); saving a {@link SparkTrainerModel} writes the same files
 * into the model folder's {@code summary/}. {@link #fromJson} and {@link #load} read it back.
 */
public final class TrainingSummary implements Serializable {
  private static final long serialVersionUID = 2L;
  /** Format version of {@link #toJson()}. */
  public static final int JSON_VERSION = 1;

  /**
   * One epoch over all ranks; {@code epoch} counts from 0. Accuracy is NaN for regression (mse); the
   * validation figures are NaN when no validation set was evaluated that epoch.
   */
  public record Epoch(int epoch, double loss, double accuracy, double samplesPerSecond, double seconds,
      double validationLoss, double validationAccuracy) implements Serializable {

    /** Whether this epoch has validation figures. */
    public boolean hasValidation() {
      return !Double.isNaN(validationLoss);
    }
  }

  /** Validation figures of one epoch: mean loss and accuracy (NaN for mse) over {@code rows} rows. */
  public record Validation(int epoch, long rows, double loss, double accuracy) implements Serializable {}

  private final List<List<EpochStats>> perRank;
  private final List<Epoch> epochs;
  private final List<Validation> validation;
  private final double fitToFirstStepSeconds;
  private final double totalSeconds;
  private final String device;
  private final int batchSize; // per worker; 0 = unknown
  private final long[] peakDeviceMemoryBytes; // by rank; -1 = not reported
  private final String precision; // "fp32" or "bf16": what the ranks trained in

  public TrainingSummary(List<List<EpochStats>> perRank, double fitToFirstStepSeconds, double totalSeconds,
      String device) {
    this(perRank, fitToFirstStepSeconds, totalSeconds, device, 0, null, List.of(), "fp32");
  }

  private TrainingSummary(List<List<EpochStats>> perRank, double fitToFirstStepSeconds, double totalSeconds,
      String device, int batchSize, long[] peakDeviceMemoryBytes, List<Validation> validation, String precision) {
    List<List<EpochStats>> ranks = new ArrayList<>();
    for (List<EpochStats> r : perRank) {
      ranks.add(List.copyOf(r));
    }
    this.perRank = List.copyOf(ranks);
    this.fitToFirstStepSeconds = fitToFirstStepSeconds;
    this.totalSeconds = totalSeconds;
    this.device = device;
    this.batchSize = batchSize;
    this.precision = precision;
    long[] peak = new long[perRank.size()];
    Arrays.fill(peak, -1);
    if (peakDeviceMemoryBytes != null) {
      System.arraycopy(peakDeviceMemoryBytes, 0, peak, 0, Math.min(peak.length, peakDeviceMemoryBytes.length));
    }
    this.peakDeviceMemoryBytes = peak;
    this.validation = List.copyOf(validation);
    List<Epoch> out = new ArrayList<>();
    int n = perRank.isEmpty() ? 0 : perRank.get(0).size();
    for (int e = 0; e < n; e++) {
      double lossSum = 0;
      double accSum = 0;
      long samples = 0;
      double maxSeconds = 0;
      int epochNo = e;
      for (List<EpochStats> r : perRank) {
        EpochStats s = r.get(e);
        epochNo = s.epoch();
        lossSum += s.loss() * s.samples();
        accSum += s.accuracy() * s.samples();
        samples += s.samples();
        maxSeconds = Math.max(maxSeconds, s.seconds());
      }
      double vLoss = Double.NaN;
      double vAcc = Double.NaN;
      for (Validation v : validation) {
        if (v.epoch() == epochNo) {
          vLoss = v.loss();
          vAcc = v.accuracy();
        }
      }
      out.add(new Epoch(epochNo, samples > 0 ? lossSum / samples : Double.NaN,
          samples > 0 ? accSum / samples : Double.NaN, maxSeconds > 0 ? samples / maxSeconds : 0, maxSeconds,
          vLoss, vAcc));
    }
    this.epochs = List.copyOf(out);
  }

  /** A copy that knows the per-worker batch size (the straggler report then speaks of time per step). */
  public TrainingSummary withBatchSize(int perWorkerBatch) {
    return new TrainingSummary(perRank, fitToFirstStepSeconds, totalSeconds, device, perWorkerBatch,
        peakDeviceMemoryBytes, validation, precision);
  }

  /** A copy with each rank's peak device memory in bytes (-1 where a rank did not report it). */
  public TrainingSummary withPeakDeviceMemory(long[] bytesByRank) {
    return new TrainingSummary(perRank, fitToFirstStepSeconds, totalSeconds, device, batchSize, bytesByRank,
        validation, precision);
  }

  /** A copy with per-epoch validation figures. */
  public TrainingSummary withValidation(List<Validation> perEpoch) {
    return new TrainingSummary(perRank, fitToFirstStepSeconds, totalSeconds, device, batchSize,
        peakDeviceMemoryBytes, perEpoch, precision);
  }

  /** A copy that records the precision the ranks trained in: "fp32" or "bf16" (the estimator's param). */
  public TrainingSummary withPrecision(String trainedIn) {
    if (!"fp32".equals(trainedIn) && !"bf16".equals(trainedIn)) {
      throw new IllegalArgumentException("training summary: precision must be fp32 or bf16, got '" + trainedIn + "'");
    }
    return new TrainingSummary(perRank, fitToFirstStepSeconds, totalSeconds, device, batchSize,
        peakDeviceMemoryBytes, validation, trainedIn);
  }

  /** Per-epoch figures over all ranks. */
  public List<Epoch> epochs() {
    return epochs;
  }

  /** Every rank's own epoch statistics (data wait, compute, communication), indexed by rank. */
  public List<List<EpochStats>> perRank() {
    return perRank;
  }

  /** Per-epoch validation figures; empty when no validation set was given. */
  public List<Validation> validation() {
    return validation;
  }

  /** Number of ranks (barrier tasks) that trained. */
  public int worldSize() {
    return perRank.size();
  }

  /** Per-worker batch size, or 0 when unknown. */
  public int batchSize() {
    return batchSize;
  }

  /** Peak device memory of each rank in bytes; -1 where not reported (e.g. the CPU device). */
  public long[] peakDeviceMemoryBytes() {
    return peakDeviceMemoryBytes.clone();
  }

  /** Seconds from the call to fit() to the start of the first training step (slowest rank). */
  public double fitToFirstStepSeconds() {
    return fitToFirstStepSeconds;
  }

  public double totalSeconds() {
    return totalSeconds;
  }

  /** The device the ranks trained on, e.g. "cpu" or "cuda:0". */
  public String device() {
    return device;
  }

  /**
   * The precision the ranks trained in: "fp32", or "bf16" (mixed precision; on the CPU engine only the linear
   * layers' inputs are rounded). "auto" is resolved: bf16 on cuda, fp32 on cpu.
   */
  public String precision() {
    return precision;
  }

  /** Ranks whose busy time per step is at least 20% above the median (see {@link StragglerReport}). */
  public StragglerReport stragglers() {
    return StragglerReport.of(perRank, batchSize, StragglerReport.DEFAULT_THRESHOLD);
  }

  /** Writes summary.json, epochs.csv, ranks.csv and curves.png into a folder (a Hadoop path). */
  public List<String> save(String dir) {
    return SummaryFiles.write(this, dir, SummaryFiles.hadoopConf());
  }

  /** Reads a summary written by {@link #save} (or saved with a model, under its {@code summary/} folder). */
  public static TrainingSummary load(String dir) {
    return SummaryFiles.read(dir, SummaryFiles.hadoopConf());
  }

  // ---- JSON and CSV ----

  private static final ObjectMapper JSON = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);

  /** The summary as JSON (NaN figures as null); {@link #fromJson} reads it back. */
  public String toJson() {
    ObjectNode root = JSON.createObjectNode();
    root.put("version", JSON_VERSION);
    root.put("device", device);
    root.put("precision", precision);
    root.put("worldSize", worldSize());
    root.put("batchSize", batchSize);
    root.put("fitToFirstStepSeconds", fitToFirstStepSeconds);
    root.put("totalSeconds", totalSeconds);
    ArrayNode ep = root.putArray("epochs");
    for (Epoch e : epochs) {
      ObjectNode o = ep.addObject();
      o.put("epoch", e.epoch());
      num(o, "loss", e.loss());
      num(o, "accuracy", e.accuracy());
      num(o, "samplesPerSecond", e.samplesPerSecond());
      num(o, "seconds", e.seconds());
      num(o, "validationLoss", e.validationLoss());
      num(o, "validationAccuracy", e.validationAccuracy());
    }
    ArrayNode val = root.putArray("validation");
    for (Validation v : validation) {
      ObjectNode o = val.addObject();
      o.put("epoch", v.epoch());
      o.put("rows", v.rows());
      num(o, "loss", v.loss());
      num(o, "accuracy", v.accuracy());
    }
    ArrayNode ranks = root.putArray("ranks");
    for (int r = 0; r < perRank.size(); r++) {
      ObjectNode o = ranks.addObject();
      o.put("rank", r);
      o.put("peakDeviceMemoryBytes", peakDeviceMemoryBytes[r]);
      ArrayNode es = o.putArray("epochs");
      for (EpochStats s : perRank.get(r)) {
        ObjectNode x = es.addObject();
        x.put("epoch", s.epoch());
        x.put("samples", s.samples());
        num(x, "loss", s.loss());
        num(x, "accuracy", s.accuracy());
        num(x, "seconds", s.seconds());
        num(x, "dataWaitSeconds", s.dataWaitSeconds());
        num(x, "computeSeconds", s.computeSeconds());
        num(x, "commSeconds", s.commSeconds());
        x.put("skippedSteps", s.skippedSteps());
      }
    }
    root.set("stragglers", stragglers().toJsonNode());
    try {
      return JSON.writeValueAsString(root);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /** Reads {@link #toJson()}'s output; throws IllegalArgumentException naming what is wrong. */
  public static TrainingSummary fromJson(String json) {
    JsonNode root;
    try {
      root = JSON.readTree(json);
    } catch (IOException e) {
      throw new IllegalArgumentException("training summary: not valid JSON: " + e.getMessage(), e);
    }
    if (root == null || !root.isObject()) {
      throw new IllegalArgumentException("training summary: expected a JSON object");
    }
    int version = root.path("version").asInt(-1);
    if (version != JSON_VERSION) {
      throw new IllegalArgumentException("training summary: format version " + version + " is not supported ("
          + "this build reads version " + JSON_VERSION + ")");
    }
    List<List<EpochStats>> perRank = new ArrayList<>();
    JsonNode ranks = root.path("ranks");
    long[] peak = new long[ranks.size()];
    for (int r = 0; r < ranks.size(); r++) {
      JsonNode o = ranks.get(r);
      peak[r] = o.path("peakDeviceMemoryBytes").asLong(-1);
      List<EpochStats> list = new ArrayList<>();
      for (JsonNode x : o.path("epochs")) {
        list.add(new EpochStats(x.path("epoch").asInt(), r, x.path("samples").asLong(), dbl(x, "loss"),
            dbl(x, "accuracy"), dbl(x, "seconds"), dbl(x, "dataWaitSeconds"), dbl(x, "computeSeconds"),
            dbl(x, "commSeconds"), x.path("skippedSteps").asLong()));
      }
      perRank.add(list);
    }
    List<Validation> val = new ArrayList<>();
    for (JsonNode v : root.path("validation")) {
      val.add(new Validation(v.path("epoch").asInt(), v.path("rows").asLong(), dbl(v, "loss"), dbl(v, "accuracy")));
    }
    return new TrainingSummary(perRank, dbl(root, "fitToFirstStepSeconds"), dbl(root, "totalSeconds"),
        root.path("device").asText(""), root.path("batchSize").asInt(0), peak, val,
        root.path("precision").asText("fp32")); // absent: written before the precision param, all fp32
  }

  /** One line per epoch: epoch (from 1), loss, accuracy, validation loss/accuracy, samples/s, seconds. */
  public String epochsCsv() {
    StringBuilder b = new StringBuilder(
        "epoch,loss,accuracy,validation_loss,validation_accuracy,samples_per_second,seconds\n");
    for (Epoch e : epochs) {
      b.append(e.epoch() + 1).append(',').append(csv(e.loss())).append(',').append(csv(e.accuracy())).append(',')
          .append(csv(e.validationLoss())).append(',').append(csv(e.validationAccuracy())).append(',')
          .append(csv(e.samplesPerSecond())).append(',').append(csv(e.seconds())).append('\n');
    }
    return b.toString();
  }

  /** One line per (rank, epoch): the rank's figures and where its time went. */
  public String ranksCsv() {
    StringBuilder b = new StringBuilder("rank,epoch,samples,loss,accuracy,seconds,data_wait_seconds,"
        + "compute_seconds,comm_seconds,skipped_steps,samples_per_second,peak_device_memory_bytes\n");
    for (int r = 0; r < perRank.size(); r++) {
      for (EpochStats s : perRank.get(r)) {
        b.append(r).append(',').append(s.epoch() + 1).append(',').append(s.samples()).append(',')
            .append(csv(s.loss())).append(',').append(csv(s.accuracy())).append(',').append(csv(s.seconds()))
            .append(',').append(csv(s.dataWaitSeconds())).append(',').append(csv(s.computeSeconds())).append(',')
            .append(csv(s.commSeconds())).append(',').append(s.skippedSteps()).append(',')
            .append(csv(s.samplesPerSecond())).append(',')
            .append(peakDeviceMemoryBytes[r] < 0 ? "" : String.valueOf(peakDeviceMemoryBytes[r])).append('\n');
      }
    }
    return b.toString();
  }

  private static void num(ObjectNode o, String key, double v) {
    if (Double.isFinite(v)) {
      o.put(key, v);
    } else {
      o.putNull(key);
    }
  }

  private static double dbl(JsonNode o, String key) {
    JsonNode v = o.get(key);
    return v == null || v.isNull() ? Double.NaN : v.asDouble();
  }

  private static String csv(double v) {
    return Double.isFinite(v) ? String.format(Locale.ROOT, "%.6g", v) : "";
  }

  @Override
  public String toString() {
    StringBuilder b = new StringBuilder();
    for (Epoch e : epochs) {
      b.append(String.format(Locale.ROOT, "epoch %d: loss %.4f, accuracy %.4f", e.epoch() + 1, e.loss(),
          e.accuracy()));
      if (e.hasValidation()) {
        b.append(String.format(Locale.ROOT, ", validation loss %.4f, accuracy %.4f", e.validationLoss(),
            e.validationAccuracy()));
      }
      b.append(String.format(Locale.ROOT, ", %.0f samples/s%n", e.samplesPerSecond()));
    }
    b.append(String.format(Locale.ROOT, "fit -> first step %.2f s, total %.2f s on %d x %s, precision %s",
        fitToFirstStepSeconds, totalSeconds, perRank.size(), device, precision));
    long maxPeak = Arrays.stream(peakDeviceMemoryBytes).max().orElse(-1);
    if (maxPeak >= 0) {
      b.append(String.format(Locale.ROOT, ", peak device memory %.1f MiB", maxPeak / 1048576.0));
    }
    StragglerReport s = stragglers();
    if (s.hasStragglers()) {
      b.append(System.lineSeparator()).append(s);
    }
    return b.toString();
  }
}
