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
import org.apache.spark.sql.types.DataTypes;
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

  /** The trained weights (rank 0's flat buffer) and the summary. */
  public record Result(float[] parameters, TrainingSummary summary, List<TaskResult> tasks) {}

  /** What validation found out about the data. */
  record DataFacts(long rows, int dim, int classesOrTargetDim, long[] rowsPerPartition) {}

  public static Result run(Dataset<?> dataset, SparkTrainer params) {
    long fitStart = System.currentTimeMillis();
    // 1. Params and config: fail before touching data.
    ModelSpec spec = params.getModelSpec();
    TrainerConfig cfg = params.trainerConfig();
    Loss loss = cfg.loss();
    int world = params.getNumWorkers();
    StructType schema = dataset.schema();
    Column features = FeatureColumns.featuresExpr(schema, params.getFeaturesCol(), params.getFeatureCols());
    String featuresName = params.getFeatureCols().length > 0 ? String.join(",", params.getFeatureCols())
        : params.getFeaturesCol();
    Column label = loss == Loss.CROSS_ENTROPY ? FeatureColumns.labelExpr(schema, params.getLabelCol())
        : FeatureColumns.targetExpr(schema, params.getLabelCol());
    SparkContext sc = dataset.sparkSession().sparkContext();
    GpuScheduling.Plan gpus = GpuScheduling.plan(dataset.sparkSession(), params.getDevice());
    checkSlots(sc, world, gpus);

    // 2. Data: the prepared rows (features array<float>, label double or target array<float>) as Spark's
    // binary rows, kept for the shuffle unless the input is cached already; one pass finds nulls, sizes,
    // non-finite values, label ranges, and each partition's row count (which numbers the rows).
    Dataset<Row> prepared = dataset.select(features.as(FeatureColumns.FEATURES), label.as("__label"));
    boolean inputCached = !dataset.storageLevel().equals(StorageLevel.NONE());
    JavaRDD<InternalRow> internal = prepared.queryExecution().toRdd().toJavaRDD().map(InternalRow::copy);
    if (!inputCached) {
      internal = internal.persist(StorageLevel.MEMORY_AND_DISK());
    }
    try {
      boolean classification = loss == Loss.CROSS_ENTROPY;
      List<DataStats> perPartition = internal.mapPartitions(it -> {
        DataStats st = new DataStats();
        while (it.hasNext()) {
          st.add(it.next(), classification);
        }
        return List.of(st).iterator();
      }).collect();
      DataFacts facts = validate(perPartition, spec, loss, featuresName, params.getLabelCol());
      LOG.info(String.format(java.util.Locale.ROOT, "validated %d rows of %d features in %.2f s", facts.rows(),
          facts.dim(), (System.currentTimeMillis() - fitStart) / 1000.0));
      SamplerPlan plan = new SamplerPlan(facts.rows(), world, cfg.batchSize(), cfg.seed(), cfg.dropLast());
      int targetDim = classification ? 0 : facts.classesOrTargetDim();
      return train(sc, internal, plan, spec, cfg, params, facts.dim(), targetDim, facts.rowsPerPartition(),
          fitStart, gpus);
    } finally {
      if (!inputCached) {
        internal.unpersist(false);
      }
    }
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

  /** (features array<float>, label double) -> UnsafeRow (features array<float>, label int). */
  static java.util.function.Function<InternalRow, InternalRow> taskRowConverter() {
    org.apache.spark.sql.catalyst.expressions.UnsafeProjection proj =
        org.apache.spark.sql.catalyst.expressions.UnsafeProjection.create(new org.apache.spark.sql.types.DataType[] {
            DataTypes.createArrayType(DataTypes.FloatType), DataTypes.IntegerType});
    org.apache.spark.sql.catalyst.expressions.GenericInternalRow tmp =
        new org.apache.spark.sql.catalyst.expressions.GenericInternalRow(2);
    return r -> {
      tmp.update(0, r.getArray(0));
      tmp.setInt(1, (int) r.getDouble(1));
      return proj.apply(tmp).copy();
    };
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
    DataStats r = new DataStats();
    long[] perPartition = new long[parts.size()];
    for (int i = 0; i < parts.size(); i++) {
      r.merge(parts.get(i));
      perPartition[i] = parts.get(i).rows;
    }
    long rows = r.rows;
    if (rows == 0) {
      throw new IllegalArgumentException("the training DataFrame is empty; fit needs at least one row");
    }
    long nullFeatures = r.nullFeatures;
    if (nullFeatures > 0) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + nullFeatures
          + " null row(s); drop them (df.na().drop()) or fill them before fit");
    }
    int minSize = r.minSize;
    int maxSize = r.maxSize;
    int dim = spec.inputSize();
    if (minSize != maxSize) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has vectors of different sizes ("
          + minSize + " to " + maxSize + "); every row needs exactly " + dim + " values (the model's input)");
    }
    if (minSize != dim) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + minSize
          + " values per row but the model spec's input needs " + dim + "; fix the spec's 'input' or the features");
    }
    long nullElements = r.nullElements;
    if (nullElements > 0) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + nullElements
          + " row(s) with null elements; fill them before fit");
    }
    long nonFinite = r.nonFinite;
    if (nonFinite > 0) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + nonFinite
          + " row(s) with NaN or infinite values; remove or replace them before fit");
    }
    long nullLabels = r.nullLabels;
    if (nullLabels > 0) {
      throw new IllegalArgumentException("label column '" + labelName + "' has " + nullLabels
          + " null row(s); drop them or fill them before fit");
    }
    int out = spec.outputSize();
    if (loss == Loss.CROSS_ENTROPY) {
      double lo = r.labelMin;
      double hi = r.labelMax;
      long nonInteger = r.nonInteger;
      if (nonInteger > 0) {
        throw new IllegalArgumentException("label column '" + labelName + "' has " + nonInteger
            + " value(s) that are not whole numbers; cross_entropy needs class indices 0.." + (out - 1));
      }
      if (lo < 0 || hi >= out) {
        throw new IllegalArgumentException("label column '" + labelName + "' has values in [" + (long) lo + ", "
            + (long) hi + "] but the model has " + out + " outputs, so labels must be in [0, " + out
            + "); re-index the labels or change the last layer's units");
      }
      return new DataFacts(rows, dim, out, perPartition);
    }
    int tMin = r.targetMinSize;
    int tMax = r.targetMaxSize;
    if (tMin != out || tMax != out) {
      throw new IllegalArgumentException("label column '" + labelName + "' has " + tMin + " to " + tMax
          + " values per row but the model has " + out + " outputs; mse needs one target per output");
    }
    if (r.badTargets > 0) {
      throw new IllegalArgumentException("label column '" + labelName + "' has " + r.badTargets
          + " row(s) with null, NaN or infinite targets; clean them before fit");
    }
    return new DataFacts(rows, dim, out, perPartition);
  }

  private static Result train(SparkContext sc, JavaRDD<InternalRow> internal, SamplerPlan plan, ModelSpec spec,
      TrainerConfig cfg, SparkTrainer params, int dim, int targetDim, long[] perPartition, long fitStart,
      GpuScheduling.Plan gpus) {
    int world = plan.world();
    long rowsPerRank = plan.rowsPerRank();
    // Sampler-aware partitioning: every row goes to (rank, local position) from the seeded permutation.
    SamplerPlan p = plan;
    // Global row index = rows of the partitions before + position inside the partition (counted during
    // validation, on the same cached data).
    int numParts = internal.getNumPartitions();
    long[] offsets = new long[numParts + 1];
    for (int i = 0; i < numParts; i++) {
      offsets[i + 1] = offsets[i] + perPartition[i];
    }
    if (offsets[numParts] != plan.rows()) {
      throw new IllegalStateException("partition row counts add up to " + offsets[numParts] + ", validation counted "
          + plan.rows() + "; the input DataFrame is not deterministic (cache or checkpoint it before fit)");
    }
    JavaRDD<Tuple2<Long, InternalRow>> keyed = internal.mapPartitionsWithIndex((part, it) -> {
      // Classification rows become (features, label int), the layout the tasks read.
      java.util.function.Function<InternalRow, InternalRow> toTaskRow = targetDim > 0 ? r -> r : taskRowConverter();
      long first = offsets[part];
      long end = offsets[part + 1];
      long[] pos = new long[2];
      return new java.util.Iterator<Tuple2<Long, InternalRow>>() {
        private long index = first;
        private InternalRow row;
        private int k;
        private int emitted;

        @Override
        public boolean hasNext() {
          if (emitted < k) {
            return true;
          }
          while (it.hasNext()) {
            row = toTaskRow.apply(it.next());
            if (index >= end) {
              throw new IllegalStateException("input partition " + part + " has more rows than validation counted; "
                  + "the input DataFrame is not deterministic (cache or checkpoint it before fit)");
            }
            k = p.positionsOf(index++, pos);
            emitted = 0;
            if (k > 0) {
              return true;
            }
          }
          return false;
        }

        @Override
        public Tuple2<Long, InternalRow> next() {
          if (!hasNext()) {
            throw new java.util.NoSuchElementException();
          }
          long q = pos[emitted++];
          return new Tuple2<>(p.rankOf(q) * rowsPerRank + p.localOf(q), row);
        }
      };
    }, true);
    RDD<Tuple2<Long, InternalRow>> sorted = JavaPairRDD.fromJavaRDD(keyed)
        .repartitionAndSortWithinPartitions(new RankPartitioner(world, rowsPerRank)).rdd();

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
    long[] peakMemory = null;
    String previous = sc.getLocalProperty("spark.job.description");
    sc.setJobDescription("spark-trainer: " + cfg.epochs() + " epoch(s) on " + world + " worker(s), batch "
        + cfg.batchSize() + " per worker");
    List<TaskResult> results;
    try {
      RDD<TaskResult> out = GpuScheduling.withProfile(sorted, gpus).barrier()
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
      if (progress != null) {
        progress.close();
      }
    }
    results.sort(Comparator.comparingInt(TaskResult::rank));
    if (results.size() != world) {
      throw new IllegalStateException("expected " + world + " task results, got " + results.size());
    }
    long digest0 = results.get(0).parameterDigest();
    for (TaskResult r : results) {
      if (r.parameterDigest() != digest0) {
        throw new IllegalStateException("rank " + r.rank() + " ended with parameters that differ from rank 0's; "
            + "the ranks diverged (please report this as a bug)");
      }
    }
    long firstStep = results.stream().mapToLong(TaskResult::firstStepMillis).max().orElse(fitStart);
    long taskStart = results.stream().mapToLong(TaskResult::taskStartMillis).max().orElse(fitStart);
    long dataReady = results.stream().mapToLong(TaskResult::dataReadyMillis).max().orElse(fitStart);
    LOG.info(String.format(java.util.Locale.ROOT, "fit -> barrier tasks started %.2f s, data loaded %.2f s, "
        + "first step %.2f s (slowest rank)", (taskStart - fitStart) / 1000.0, (dataReady - fitStart) / 1000.0,
        (firstStep - fitStart) / 1000.0));
    long end = System.currentTimeMillis();
    List<List<EpochStats>> perRank = new ArrayList<>();
    for (TaskResult r : results) {
      perRank.add(r.epochs());
    }
    TrainingSummary summary = new TrainingSummary(perRank, (firstStep - fitStart) / 1000.0,
        (end - fitStart) / 1000.0, results.get(0).device()).withBatchSize(cfg.batchSize())
        .withPeakDeviceMemory(peakMemory);
    dev.sparktrainer.api.StragglerReport stragglers = summary.stragglers();
    if (stragglers.hasStragglers()) {
      LOG.warn(stragglers.toString());
    } else {
      LOG.info(stragglers.toString());
    }
    return new Result(results.get(0).parameters(), summary, results);
  }
}
