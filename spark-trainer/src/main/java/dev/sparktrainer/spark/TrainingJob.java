package dev.sparktrainer.spark;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.count;
import static org.apache.spark.sql.functions.expr;
import static org.apache.spark.sql.functions.lit;
import static org.apache.spark.sql.functions.max;
import static org.apache.spark.sql.functions.min;
import static org.apache.spark.sql.functions.sum;
import static org.apache.spark.sql.functions.when;

import dev.sparktrainer.api.SparkTrainer;
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
import java.util.logging.Logger;
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
  private static final Logger LOG = Logger.getLogger(TrainingJob.class.getName());

  private TrainingJob() {}

  /** The trained weights (rank 0's flat buffer) and the summary. */
  public record Result(float[] parameters, TrainingSummary summary, List<TaskResult> tasks) {}

  /** What validation found out about the data. */
  record DataFacts(long rows, int dim, int classesOrTargetDim) {}

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
    checkSlots(sc, world);

    // 2. Data: one aggregation pass finds nulls, sizes, non-finite values and label ranges.
    Dataset<Row> prepared = dataset.select(features.as(FeatureColumns.FEATURES), label.as("__label"));
    prepared = prepared.persist(StorageLevel.MEMORY_AND_DISK());
    try {
      DataFacts facts = validate(prepared, spec, loss, featuresName, params.getLabelCol());
      SamplerPlan plan = new SamplerPlan(facts.rows(), world, cfg.batchSize(), cfg.seed(), cfg.dropLast());
      Column labelOut = loss == Loss.CROSS_ENTROPY
          ? col("__label").cast(DataTypes.IntegerType).as(FeatureColumns.LABEL)
          : col("__label").as(FeatureColumns.TARGET);
      Dataset<Row> rows = prepared.select(col(FeatureColumns.FEATURES), labelOut);
      int targetDim = loss == Loss.CROSS_ENTROPY ? 0 : facts.classesOrTargetDim();
      return train(sc, rows, plan, spec, cfg, params, facts.dim(), targetDim, fitStart);
    } finally {
      prepared.unpersist(false);
    }
  }

  /** Fails at once when the barrier stage cannot get W slots (Spark's own check takes ~10 minutes). */
  static void checkSlots(SparkContext sc, int world) {
    int slots;
    try {
      slots = sc.maxNumConcurrentTasks(sc.resourceProfileManager().defaultResourceProfile());
    } catch (RuntimeException e) {
      LOG.warning("could not count task slots (" + e + "); skipping the up-front slot check");
      return;
    }
    if (world > slots) {
      throw new IllegalArgumentException("numWorkers is " + world + " but this Spark application has only " + slots
          + " task slot(s) (master " + sc.master() + "); a barrier stage needs all " + world
          + " tasks running at once. Lower numWorkers to <= " + slots + " or add executors/cores (GPU clusters: "
          + "one slot per GPU, see spark.executor.resource.gpu.amount and spark.task.resource.gpu.amount)");
    }
  }

  static DataFacts validate(Dataset<Row> prepared, ModelSpec spec, Loss loss, String featuresName,
      String labelName) {
    String f = FeatureColumns.FEATURES;
    List<Column> aggs = new ArrayList<>(List.of(
        count(lit(1)),
        sum(when(col(f).isNull(), 1).otherwise(0)),
        min(when(col(f).isNotNull(), expr("size(" + f + ")"))),
        max(when(col(f).isNotNull(), expr("size(" + f + ")"))),
        sum(when(expr("exists(" + f + ", x -> x IS NULL)"), 1).otherwise(0)),
        sum(when(expr("exists(" + f + ", x -> isnan(x) OR x = double('inf') OR x = double('-inf'))"), 1)
            .otherwise(0)),
        sum(when(col("__label").isNull(), 1).otherwise(0))));
    if (loss == Loss.CROSS_ENTROPY) {
      aggs.add(min(col("__label")));
      aggs.add(max(col("__label")));
      aggs.add(sum(when(expr("__label != floor(__label) OR isnan(__label)"), 1).otherwise(0)));
    } else {
      aggs.add(min(when(col("__label").isNotNull(), expr("size(__label)"))));
      aggs.add(max(when(col("__label").isNotNull(), expr("size(__label)"))));
      aggs.add(sum(when(expr("exists(__label, x -> x IS NULL OR isnan(x) OR x = double('inf') OR "
          + "x = double('-inf'))"), 1).otherwise(0)));
    }
    Row r = prepared.agg(aggs.get(0), aggs.subList(1, aggs.size()).toArray(new Column[0])).first();
    long rows = r.getLong(0);
    if (rows == 0) {
      throw new IllegalArgumentException("the training DataFrame is empty; fit needs at least one row");
    }
    long nullFeatures = r.getLong(1);
    if (nullFeatures > 0) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + nullFeatures
          + " null row(s); drop them (df.na().drop()) or fill them before fit");
    }
    int minSize = r.getInt(2);
    int maxSize = r.getInt(3);
    int dim = spec.inputSize();
    if (minSize != maxSize) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has vectors of different sizes ("
          + minSize + " to " + maxSize + "); every row needs exactly " + dim + " values (the model's input)");
    }
    if (minSize != dim) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + minSize
          + " values per row but the model spec's input needs " + dim + "; fix the spec's 'input' or the features");
    }
    long nullElements = r.getLong(4);
    if (nullElements > 0) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + nullElements
          + " row(s) with null elements; fill them before fit");
    }
    long nonFinite = r.getLong(5);
    if (nonFinite > 0) {
      throw new IllegalArgumentException("features column '" + featuresName + "' has " + nonFinite
          + " row(s) with NaN or infinite values; remove or replace them before fit");
    }
    long nullLabels = r.getLong(6);
    if (nullLabels > 0) {
      throw new IllegalArgumentException("label column '" + labelName + "' has " + nullLabels
          + " null row(s); drop them or fill them before fit");
    }
    int out = spec.outputSize();
    if (loss == Loss.CROSS_ENTROPY) {
      double lo = r.getDouble(7);
      double hi = r.getDouble(8);
      long nonInteger = r.getLong(9);
      if (nonInteger > 0) {
        throw new IllegalArgumentException("label column '" + labelName + "' has " + nonInteger
            + " value(s) that are not whole numbers; cross_entropy needs class indices 0.." + (out - 1));
      }
      if (lo < 0 || hi >= out) {
        throw new IllegalArgumentException("label column '" + labelName + "' has values in [" + (long) lo + ", "
            + (long) hi + "] but the model has " + out + " outputs, so labels must be in [0, " + out
            + "); re-index the labels or change the last layer's units");
      }
      return new DataFacts(rows, dim, out);
    }
    int tMin = r.getInt(7);
    int tMax = r.getInt(8);
    if (tMin != out || tMax != out) {
      throw new IllegalArgumentException("label column '" + labelName + "' has " + tMin + " to " + tMax
          + " values per row but the model has " + out + " outputs; mse needs one target per output");
    }
    if (r.getLong(9) > 0) {
      throw new IllegalArgumentException("label column '" + labelName + "' has " + r.getLong(9)
          + " row(s) with null, NaN or infinite targets; clean them before fit");
    }
    return new DataFacts(rows, dim, out);
  }

  private static Result train(SparkContext sc, Dataset<Row> rows, SamplerPlan plan, ModelSpec spec,
      TrainerConfig cfg, SparkTrainer params, int dim, int targetDim, long fitStart) {
    int world = plan.world();
    long rowsPerRank = plan.rowsPerRank();
    // Sampler-aware partitioning: every row goes to (rank, local position) from the seeded permutation.
    JavaRDD<InternalRow> internal = rows.queryExecution().toRdd().toJavaRDD();
    SamplerPlan p = plan;
    JavaPairRDD<Long, InternalRow> keyed = internal.zipWithIndex().flatMapToPair(t -> {
      long[] pos = new long[2];
      int k = p.positionsOf(t._2(), pos);
      List<Tuple2<Long, InternalRow>> out = new ArrayList<>(k);
      for (int j = 0; j < k; j++) {
        out.add(new Tuple2<>(p.rankOf(pos[j]) * rowsPerRank + p.localOf(pos[j]), t._1().copy()));
      }
      return out.iterator();
    });
    RDD<Tuple2<Long, InternalRow>> sorted =
        keyed.repartitionAndSortWithinPartitions(new RankPartitioner(world, rowsPerRank)).rdd();

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
    String previous = sc.getLocalProperty("spark.job.description");
    sc.setJobDescription("spark-trainer: " + cfg.epochs() + " epoch(s) on " + world + " worker(s), batch "
        + cfg.batchSize() + " per worker");
    List<TaskResult> results;
    try {
      RDD<TaskResult> out = sorted.barrier().mapPartitions(fn, false, ClassTag$.MODULE$.apply(TaskResult.class));
      results = new ArrayList<>(out.toJavaRDD().repartition(1).collect());
    } finally {
      sc.setJobDescription(previous);
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
    long end = System.currentTimeMillis();
    List<List<EpochStats>> perRank = new ArrayList<>();
    for (TaskResult r : results) {
      perRank.add(r.epochs());
    }
    TrainingSummary summary = new TrainingSummary(perRank, (firstStep - fitStart) / 1000.0,
        (end - fitStart) / 1000.0, results.get(0).device());
    return new Result(results.get(0).parameters(), summary, results);
  }
}
