package dev.sparktrainer.spark;


import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.TrainingException;
import dev.sparktrainer.api.TrainingSummary;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.train.CheckpointPolicy;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.TrainerConfig;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Comparator;
import java.util.List;
import org.apache.spark.SparkContext;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.Column;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.storage.StorageLevel;
import org.apache.spark.util.SerializableConfiguration;
import scala.Tuple2;
import scala.reflect.ClassTag$;

/**
 * The driver side of a fit: validate params, schema and data (clear errors, before any task starts), plan
 * the sampler-aware partitioning, shuffle rows to their ranks, run the barrier stage, and collect results.
 *
 * <p>Note [shuffle after the barrier stage]: a failed barrier result stage is never retried by Spark, so the
 * stage's output goes through {@code repartition(1)} before it is collected: the barrier stage is then a
 * shuffle map stage, which Spark resubmits as a whole when a task fails.
 */
public final class TrainingJob {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(TrainingJob.class);

  private TrainingJob() {}

  /** The trained weights (rank 0's flat buffer), the summary, every rank's result, and the start-up phases. */
  public record Result(float[] parameters, TrainingSummary summary, List<TaskResult> tasks, Startup startup) {}

  /**
   * Where the time from {@code fit()} to the first training step went (wall clock, epoch millis; the task
   * phases are the slowest rank's): validation on the driver, then the barrier job until every task has
   * started (the exchange of rows to their ranks runs in this phase), the tasks' data loading, the
   * communicator set-up, and model set-up until the first step.
   */
  public record Startup(long fitStart, long validated, long tasksStarted, long dataReady, long commReady,
      long firstStep) {
    static Startup of(long fitStart, long validated, List<TaskResult> tasks) {
      return new Startup(fitStart, validated, max(tasks, TaskResult::taskStartMillis),
          max(tasks, TaskResult::dataReadyMillis), max(tasks, TaskResult::commReadyMillis),
          max(tasks, TaskResult::firstStepMillis));
    }

    private static long max(List<TaskResult> tasks, java.util.function.ToLongFunction<TaskResult> f) {
      return tasks.stream().mapToLong(f).max().orElse(0);
    }

    /** Seconds from fit() to the first step. */
    public double toFirstStepSeconds() {
      return (firstStep - fitStart) / 1000.0;
    }

    @Override
    public String toString() {
      return String.format(java.util.Locale.ROOT, "fit -> first step %.2f s: validation %.2f s, rows to ranks until "
          + "all tasks started %.2f s, data loaded %.2f s, communicator %.2f s, model + first batch %.2f s",
          toFirstStepSeconds(), (validated - fitStart) / 1000.0, (tasksStarted - validated) / 1000.0,
          (dataReady - tasksStarted) / 1000.0, (commReady - dataReady) / 1000.0, (firstStep - commReady) / 1000.0);
    }
  }

  /** What validation found out about the data. */
  record DataFacts(long rows, int dim, int classesOrTargetDim, long[] rowsPerPartition) {}

  /** Fits on {@code dataset} (with {@code validationIndicatorCol} set: its rows where that column is false). */
  public static Result run(Dataset<?> dataset, SparkTrainer params) {
    return run(dataset, null, params);
  }

  /**
   * Fits on {@code dataset}, evaluating the model on {@code validation} (null: none) after every epoch; with
   * {@code validationIndicatorCol} set, {@code dataset}'s rows where that column is true are the validation
   * rows and the others the training rows (rows where it is null are in neither, as in Spark ML).
   */
  public static Result run(Dataset<?> dataset, Dataset<?> validation, SparkTrainer params) {
    long fitStart = System.currentTimeMillis();
    // 1. Params and config: fail before touching data.
    ModelSpec spec = params.getModelSpec();
    TrainerConfig cfg = params.trainerConfig();
    SparkTrainer.checkPrecision(params.getPrecision());
    SparkTrainer.checkGradientPrecision(params.getGradientPrecision());
    Loss loss = cfg.loss();
    int world = params.getNumWorkers();
    Dataset<?> train = dataset;
    String trainWhat = "the training DataFrame";
    String validationWhat = "the validation DataFrame";
    boolean deterministic = isCached(dataset);
    String indicator = params.getValidationIndicatorCol();
    if (!indicator.isEmpty()) {
      if (validation != null) {
        throw new IllegalArgumentException("both a validation DataFrame and validationIndicatorCol '" + indicator
            + "' are given; use one of them (fit(train, validation), or one DataFrame with the indicator column)");
      }
      Column isValidation = indicatorColumn(dataset, indicator);
      train = dataset.filter(org.apache.spark.sql.functions.not(isValidation));
      validation = dataset.filter(isValidation);
      trainWhat = "the training part (rows with validationIndicatorCol '" + indicator + "' false)";
      validationWhat = "the validation part (rows with validationIndicatorCol '" + indicator + "' true)";
    }
    Prepared t = prepare(train, params, loss, "", deterministic);
    Prepared v = null;
    SparkContext sc = dataset.sparkSession().sparkContext();
    try {
      if (validation != null) {
        v = prepare(validation, params, loss, validationWhat + ": ", indicator.isEmpty() ? isCached(validation)
            : deterministic);
      }
      GpuScheduling.Plan gpus = GpuScheduling.plan(dataset.sparkSession(), params.getDevice());
      checkSlots(sc, world, gpus);

      // 2. Data: one pass (one Spark job over the training and the validation partitions) finds nulls, sizes,
      // non-finite values, label ranges, and each partition's row count (which numbers the rows).
      boolean classification = loss == Loss.CROSS_ENTROPY;
      JavaRDD<InternalRow> all = v == null ? t.rows() : t.rows().union(v.rows());
      List<DataStats> perPartition = all.mapPartitions(it -> {
        DataStats st = new DataStats();
        while (it.hasNext()) {
          st.add(it.next(), classification);
        }
        return List.of(st).iterator();
      }).collect();
      int trainParts = t.rows().getNumPartitions();
      DataFacts facts = validate(perPartition.subList(0, trainParts), spec, loss, t.featuresName(),
          params.getLabelCol(), trainWhat, "");
      DataFacts vfacts = v == null ? null : validate(perPartition.subList(trainParts, perPartition.size()), spec,
          loss, v.featuresName(), params.getLabelCol(), validationWhat, validationWhat + ": ");
      long validated = System.currentTimeMillis();
      LOG.info(String.format(java.util.Locale.ROOT, "validated %d rows of %d features%s in %.2f s", facts.rows(),
          facts.dim(), vfacts == null ? "" : " and " + vfacts.rows() + " validation rows",
          (validated - fitStart) / 1000.0));
      SamplerPlan plan = new SamplerPlan(facts.rows(), world, cfg.batchSize(), cfg.seed(), cfg.dropLast());
      int targetDim = classification ? 0 : facts.classesOrTargetDim();
      return train(sc, t.rows(), plan, v == null ? null : v.rows(), vfacts, spec, cfg, params, facts.dim(),
          targetDim, facts.rowsPerPartition(), fitStart, validated, gpus);
    } finally {
      try {
        t.release();
      } finally {
        if (v != null) {
          v.release();
        }
      }
    }
  }

  /** A DataFrame's rows prepared for training: features array&lt;float&gt;, label double or target floats. */
  private record Prepared(JavaRDD<InternalRow> rows, String featuresName, boolean persisted) {
    void release() {
      if (persisted) {
        rows.unpersist(false);
      }
    }
  }

  /**
   * Selects the features and label of {@code df} as Spark's binary rows; persisted for the two passes over
   * them (validation, rows to ranks) unless {@code deterministic} (the input is cached). Column errors get
   * {@code prefix}.
   */
  private static Prepared prepare(Dataset<?> df, SparkTrainer params, Loss loss, String prefix,
      boolean deterministic) {
    StructType schema = df.schema();
    Column features;
    Column label;
    try {
      features = FeatureColumns.featuresExpr(schema, params.getFeaturesCol(), params.getFeatureCols());
      label = loss == Loss.CROSS_ENTROPY ? FeatureColumns.labelExpr(schema, params.getLabelCol())
          : FeatureColumns.targetExpr(schema, params.getLabelCol());
    } catch (IllegalArgumentException e) {
      if (prefix.isEmpty()) {
        throw e;
      }
      throw new IllegalArgumentException(prefix + e.getMessage(), e);
    }
    String featuresName = params.getFeatureCols().length > 0 ? String.join(",", params.getFeatureCols())
        : params.getFeaturesCol();
    Dataset<Row> prepared = df.select(features.as(FeatureColumns.FEATURES), label.as("__label"));
    // Both passes read each row before the next, so Spark's reused rows need no copy, except to persist them.
    JavaRDD<InternalRow> rows = prepared.queryExecution().toRdd().toJavaRDD();
    if (!deterministic) {
      rows = rows.map(InternalRow::copy).persist(StorageLevel.MEMORY_AND_DISK());
    }
    return new Prepared(rows, featuresName, !deterministic);
  }

  private static boolean isCached(Dataset<?> df) {
    return !df.storageLevel().equals(StorageLevel.NONE());
  }

  /** The boolean indicator column, or an error that says what is wrong with it. */
  static Column indicatorColumn(Dataset<?> df, String name) {
    StructType schema = df.schema();
    if (!java.util.Arrays.asList(schema.fieldNames()).contains(name)) {
      throw new IllegalArgumentException("validationIndicatorCol '" + name + "' is not in the DataFrame; its columns "
          + "are " + java.util.Arrays.toString(schema.fieldNames()));
    }
    org.apache.spark.sql.types.DataType type = schema.apply(name).dataType();
    if (!type.equals(org.apache.spark.sql.types.DataTypes.BooleanType)) {
      throw new IllegalArgumentException("validationIndicatorCol '" + name + "' has type " + type.simpleString()
          + "; it must be boolean (true: a validation row, false: a training row), e.g. "
          + "df.withColumn(\"" + name + "\", rand(7).lt(0.1))");
    }
    return df.col(name);
  }

  /** offsets[i] = rows of the partitions before partition i (the global index of its first row), and the total. */
  static long[] offsetsOf(long[] rowsPerPartition) {
    long[] offsets = new long[rowsPerPartition.length + 1];
    for (int i = 0; i < rowsPerPartition.length; i++) {
      offsets[i + 1] = offsets[i] + rowsPerPartition[i];
    }
    return offsets;
  }

  /** The failing task's own error out of Spark's stage-failure message (its first line after the reason). */
  static String taskError(String sparkMessage) {
    if (sparkMessage == null) {
      return "unknown error";
    }
    String marker = "finished unsuccessfully.";
    int i = sparkMessage.indexOf(marker);
    String rest = i >= 0 ? sparkMessage.substring(i + marker.length()).strip() : sparkMessage.strip();
    int nl = rest.indexOf('\n');
    return nl > 0 ? rest.substring(0, nl).strip() : rest;
  }

  /** The failing rank's log tail (see RankLog) out of Spark's message, as extra lines; "" when absent. */
  static String logTail(String sparkMessage) {
    if (sparkMessage == null) {
      return "";
    }
    int i = sparkMessage.indexOf(RankLog.MARKER);
    if (i < 0) {
      return "";
    }
    StringBuilder b = new StringBuilder();
    for (String line : sparkMessage.substring(i).split("\n")) {
      if (line.startsWith("\tat ") || line.startsWith("Caused by") || line.isBlank()) {
        break;
      }
      b.append('\n').append(line);
    }
    return b.toString();
  }

  /**
   * Fails at once when the barrier stage cannot get W slots (Spark's own check takes ~10 minutes): GPU slots
   * when the training stage takes GPUs ({@link GpuScheduling}), else task slots.
   */
  static void checkSlots(SparkContext sc, int world, GpuScheduling.Plan gpus) {
    if (gpus.mode() != GpuScheduling.Mode.NONE) {
      GpuScheduling.checkSlots(sc, world, gpus);
      return;
    }
    int slots;
    try {
      slots = sc.maxNumConcurrentTasks(sc.resourceProfileManager().defaultResourceProfile());
    } catch (RuntimeException e) {
      LOG.warn("could not count task slots (" + e + "); skipping the up-front slot check");
      return;
    }
    if (world > slots) {
      throw new IllegalArgumentException("numWorkers is " + world + " but this Spark application has only " + slots
          + " task slot(s) (master " + sc.master() + "); a barrier stage needs all " + world
          + " tasks running at once. Lower numWorkers to <= " + slots + " or add executors/cores (GPU clusters: "
          + "one slot per GPU, see spark.executor.resource.gpu.amount and spark.task.resource.gpu.amount)");
    }
  }

  static DataFacts validate(List<DataStats> parts, ModelSpec spec, Loss loss, String featuresName,
      String labelName) {
    return validate(parts, spec, loss, featuresName, labelName, "the training DataFrame", "");
  }

  /**
   * Checks the merged statistics of {@code what} (e.g. "the validation DataFrame"); every message about a
   * column starts with {@code prefix}.
   */
  static DataFacts validate(List<DataStats> parts, ModelSpec spec, Loss loss, String featuresName,
      String labelName, String what, String prefix) {
    DataStats r = new DataStats();
    long[] perPartition = new long[parts.size()];
    for (int i = 0; i < parts.size(); i++) {
      r.merge(parts.get(i));
      perPartition[i] = parts.get(i).rows;
    }
    long rows = r.rows;
    if (rows == 0) {
      if (what.equals("the training DataFrame")) {
        throw new IllegalArgumentException("the training DataFrame is empty; fit needs at least one row");
      }
      throw new IllegalArgumentException(what + (what.contains("validation")
          ? " is empty; fit needs at least one row there (or no validation set)"
          : " is empty; fit needs at least one row"));
    }
    long nullFeatures = r.nullFeatures;
    if (nullFeatures > 0) {
      throw new IllegalArgumentException(prefix + "features column '" + featuresName + "' has " + nullFeatures
          + " null row(s); drop them (df.na().drop()) or fill them before fit");
    }
    int minSize = r.minSize;
    int maxSize = r.maxSize;
    int dim = spec.inputSize();
    if (minSize != maxSize) {
      throw new IllegalArgumentException(prefix + "features column '" + featuresName
          + "' has vectors of different sizes (" + minSize + " to " + maxSize + "); every row needs exactly " + dim
          + " values (the model's input)");
    }
    if (minSize != dim) {
      throw new IllegalArgumentException(prefix + "features column '" + featuresName + "' has " + minSize
          + " values per row but the model spec's input needs " + dim + "; fix the spec's 'input' or the features");
    }
    long nullElements = r.nullElements;
    if (nullElements > 0) {
      throw new IllegalArgumentException(prefix + "features column '" + featuresName + "' has " + nullElements
          + " row(s) with null elements; fill them before fit");
    }
    long nonFinite = r.nonFinite;
    if (nonFinite > 0) {
      throw new IllegalArgumentException(prefix + "features column '" + featuresName + "' has " + nonFinite
          + " row(s) with NaN or infinite values; remove or replace them before fit");
    }
    long nullLabels = r.nullLabels;
    if (nullLabels > 0) {
      throw new IllegalArgumentException(prefix + "label column '" + labelName + "' has " + nullLabels
          + " null row(s); drop them or fill them before fit");
    }
    int out = spec.outputSize();
    if (loss == Loss.CROSS_ENTROPY) {
      double lo = r.labelMin;
      double hi = r.labelMax;
      long nonInteger = r.nonInteger;
      if (nonInteger > 0) {
        throw new IllegalArgumentException(prefix + "label column '" + labelName + "' has " + nonInteger
            + " value(s) that are not whole numbers; cross_entropy needs class indices 0.." + (out - 1));
      }
      if (lo < 0 || hi >= out) {
        throw new IllegalArgumentException(prefix + "label column '" + labelName + "' has values in [" + (long) lo
            + ", " + (long) hi + "] but the model has " + out + " outputs, so labels must be in [0, " + out
            + "); re-index the labels or change the last layer's units");
      }
      return new DataFacts(rows, dim, out, perPartition);
    }
    int tMin = r.targetMinSize;
    int tMax = r.targetMaxSize;
    if (tMin != out || tMax != out) {
      throw new IllegalArgumentException(prefix + "label column '" + labelName + "' has " + tMin + " to " + tMax
          + " values per row but the model has " + out + " outputs; mse needs one target per output");
    }
    if (r.badTargets > 0) {
      throw new IllegalArgumentException(prefix + "label column '" + labelName + "' has " + r.badTargets
          + " row(s) with null, NaN or infinite targets; clean them before fit");
    }
    return new DataFacts(rows, dim, out, perPartition);
  }

  private static Result train(SparkContext sc, JavaRDD<InternalRow> internal, SamplerPlan plan,
      JavaRDD<InternalRow> validationRows, DataFacts validationFacts, ModelSpec spec, TrainerConfig cfg,
      SparkTrainer params, int dim, int targetDim, long[] perPartition, long fitStart, long validated,
      GpuScheduling.Plan gpus) {
    int world = plan.world();
    long rowsPerRank = plan.rowsPerRank();
    // Sampler-aware partitioning: every row goes to (rank, local position) from the seeded permutation.
    SamplerPlan p = plan;
    // Global row index = rows of the partitions before + position inside the partition (counted during
    // validation, on the same cached data).
    long[] offsets = offsetsOf(perPartition);
    // Note [rows to ranks] (RankChunks): each row travels to its rank inside a compact binary chunk; the
    // validation rows too (row i to rank i % W), in the same exchange.
    int numRanks = world;
    JavaRDD<Tuple2<Integer, byte[]>> chunks = internal.mapPartitionsWithIndex((part, it) ->
        RankChunks.encode(part, it, offsets[part], offsets[part + 1], p, dim, targetDim), true);
    if (validationRows != null) {
      long[] vOffsets = offsetsOf(validationFacts.rowsPerPartition());
      chunks = chunks.union(validationRows.mapPartitionsWithIndex((part, it) -> RankChunks.encodeValidation(part, it,
          vOffsets[part], vOffsets[part + 1], numRanks, dim, targetDim), true));
    }
    RDD<Tuple2<Integer, byte[]>> toRanks = JavaPairRDD.fromJavaRDD(chunks)
        .partitionBy(new RankPartitioner(numRanks)).rdd();

    byte[] secret = new byte[32];
    new SecureRandom().nextBytes(secret);
    CheckpointPolicy checkpoints = null;
    if (!params.getCheckpointPath().isEmpty()) {
      // Note [one checkpoint folder per fit]: a retried stage of this fit resumes from this folder; another
      // fit with the same checkpointPath starts fresh in its own folder.
      String runId = "run-" + java.time.LocalDateTime.now().format(java.time.format.DateTimeFormatter.ofPattern(
          "yyyyMMdd-HHmmss")) + "-" + java.util.UUID.randomUUID().toString().substring(0, 8);
      checkpoints = new CheckpointPolicy(new org.apache.hadoop.fs.Path(params.getCheckpointPath(), runId).toString(),
          params.getCheckpointInterval(), 3);
      LOG.info("checkpoints of this fit go to " + checkpoints.dir());
    }
    BarrierTrainFunction fn = new BarrierTrainFunction(spec.toJson(), cfg, params.getDevice(),
        Base64.getEncoder().encodeToString(secret), params.getTimeoutSeconds(), dim, targetDim,
        Math.toIntExact(plan.stepsPerEpoch()), rowsPerRank, checkpoints,
        new SerializableConfiguration(sc.hadoopConfiguration()));
    // Live progress (issue 9): the ranks report to a driver-side endpoint authenticated by its own token.
    ProgressServer progress = ProgressServer.forDriver(sc, world, cfg.batchSize());
    fn.withProgress(progress == null ? null : progress.endpoint());
    fn.withPrecision(params.getPrecision(), params.getCudnnBenchmark());
    fn.withCudaGraphs(params.getCudaGraphs());
    fn.withShardOptimizer(params.getShardOptimizer());
    fn.withCopyEngineCollectives(params.getCopyEngineCollectives());
    fn.withAllReduceMode(params.getAllReduceMode());
    fn.withGemmSmCarveout(params.getGemmSmCarveout());
    fn.withGradientPrecision(params.getGradientPrecision());
    if (validationFacts != null) {
      fn.withValidation(validationFacts.rows());
    }
    // The ranks' all-gathers meet here, not in BarrierTaskContext.allGather: Note [driver rendezvous].
    RendezvousServer rendezvous = RendezvousServer.forDriver(sc, world);
    fn.withRendezvous(rendezvous == null ? null : rendezvous.endpoint());
    long[] peakMemory = null;
    String previous = sc.getLocalProperty("spark.job.description");
    sc.setJobDescription("spark-trainer: " + cfg.epochs() + " epoch(s) on " + world + " worker(s), batch "
        + cfg.batchSize() + " per worker");
    List<TaskResult> results;
    try {
      RDD<TaskResult> out = GpuScheduling.withProfile(toRanks, gpus).barrier()
          .mapPartitions(fn, false, ClassTag$.MODULE$.apply(TaskResult.class));
      results = new ArrayList<>(out.toJavaRDD().repartition(1).collect());
      peakMemory = ProgressServer.peakMemoryOf(progress);
    } catch (Exception e) { // Scala throws the checked SparkException without declaring it
      if (!(e instanceof org.apache.spark.SparkException)) {
        throw e;
      }
      throw new TrainingException("training failed on " + world + " worker(s): " + taskError(e.getMessage())
          + " (the training stage is retried up to spark.stage.maxConsecutiveAttempts times, resuming from the "
          + "newest checkpoint when checkpointPath is set)" + logTail(e.getMessage()), e);
    } finally {
      sc.setJobDescription(previous);
      try {
        if (rendezvous != null) {
          rendezvous.close();
        }
      } finally {
        if (progress != null) {
          progress.close();
        }
      }
    }
    results.sort(Comparator.comparingInt(TaskResult::rank));
    if (results.size() != world) {
      throw new IllegalStateException("expected " + world + " task results, got " + results.size());
    }
    long digest0 = results.get(0).parameterDigest();
    for (TaskResult r : results) {
      if (!r.precision().equals(results.get(0).precision())) {
        throw new IllegalStateException("rank " + r.rank() + " trained in " + r.precision() + " but rank 0 in "
            + results.get(0).precision() + " (precision auto on a mix of cpu and cuda ranks?); set precision to "
            + "fp32 or bf16, or device to cpu or cuda");
      }
      if (r.parameterDigest() != digest0) {
        throw new IllegalStateException("rank " + r.rank() + " ended with parameters that differ from rank 0's; "
            + "the ranks diverged (please report this as a bug)");
      }
      if (!r.validation().equals(results.get(0).validation())) {
        throw new IllegalStateException("rank " + r.rank() + " computed validation figures " + r.validation()
            + " that differ from rank 0's " + results.get(0).validation() + " (please report this as a bug)");
      }
    }
    Startup startup = Startup.of(fitStart, validated, results);
    long firstStep = startup.firstStep();
    LOG.info(startup + " (slowest rank per phase)");
    long end = System.currentTimeMillis();
    List<List<EpochStats>> perRank = new ArrayList<>();
    for (TaskResult r : results) {
      perRank.add(r.epochs());
    }
    TrainingSummary summary = new TrainingSummary(perRank, (firstStep - fitStart) / 1000.0,
        (end - fitStart) / 1000.0, results.get(0).device()).withBatchSize(cfg.batchSize())
        .withPeakDeviceMemory(peakMemory).withValidation(results.get(0).validation())
        .withPrecision(results.get(0).precision());
    dev.sparktrainer.api.StragglerReport stragglers = summary.stragglers();
    if (stragglers.hasStragglers()) {
      LOG.warn(stragglers.toString());
    } else {
      LOG.info(stragglers.toString());
    }
    return new Result(results.get(0).parameters(), summary, results, startup);
  }
}
