package dev.sparktrainer.api;

import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.spark.TrainingJob;
import dev.sparktrainer.train.TrainerConfig;
import org.apache.spark.ml.Estimator;
import org.apache.spark.ml.param.BooleanParam;
import org.apache.spark.ml.param.DoubleParam;
import org.apache.spark.ml.param.IntParam;
import org.apache.spark.ml.param.LongParam;
import org.apache.spark.ml.param.Param;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.ml.param.ParamValidators;
import org.apache.spark.ml.param.StringArrayParam;
import org.apache.spark.ml.util.DefaultParamsReader;
import org.apache.spark.ml.util.DefaultParamsWritable;
import org.apache.spark.ml.util.Identifiable$;
import org.apache.spark.ml.util.MLReader;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.types.StructType;

/**
 * A Spark ML Estimator that trains a neural network with data-parallel SGD: {@code fit(df)} runs one barrier
 * task per worker (GPU or CPU), feeds each its shard as Arrow batches, averages gradients every step (NCCL on
 * GPU, a TCP ring on CPU) and returns a {@link SparkTrainerModel}.
 *
 * <pre>{@code
 * SparkTrainerModel m = new SparkTrainer()
 *     .setModelSpec(ModelSpec.mlp(784, new int[] {256, 128}, 10, "relu", 0f))
 *     .setNumWorkers(2).setBatchSize(128).setEpochs(3)
 *     .fit(df);
 * }</pre>
 *
 * Features come from one column (Spark ML vector, array of numbers, or a number) or several numeric columns
 * ({@link #setFeatureCols}); labels are class indices in [0, classes) for cross-entropy, or numbers for MSE.
 * Bad input fails on the driver before any task starts, with a message that says what to fix. A validation
 * set ({@link #fit(Dataset, Dataset)} or {@link #setValidationIndicatorCol}) is evaluated after every epoch;
 * its loss and accuracy are in the model's summary. {@link #setPrecision} picks fp32 (default), bf16 mixed
 * precision, or auto (bf16 on GPUs, fp32 on CPUs); the summary and the fitted model record which one trained.
 */
public final class SparkTrainer extends Estimator<SparkTrainerModel> implements DefaultParamsWritable {
  private static final long serialVersionUID = 1L;
  private final String uid;

  private final Param<String> featuresCol;
  private final StringArrayParam featureCols;
  private final Param<String> labelCol;
  private final Param<String> predictionCol;
  private final Param<String> probabilityCol;
  private final Param<String> modelSpec;
  private final Param<String> optimizer;
  private final Param<String> schedule;
  private final Param<String> loss;
  private final IntParam epochs;
  private final IntParam batchSize;
  private final IntParam numWorkers;
  private final Param<String> device;
  private final LongParam seed;
  private final BooleanParam dropLast;
  private final DoubleParam clipNorm;
  private final IntParam accumulation;
  private final Param<String> checkpointPath;
  private final IntParam checkpointInterval;
  private final IntParam timeoutSeconds;
  private final Param<String> nonFinite;
  private final Param<String> validationIndicatorCol;
  private final Param<String> precision;
  private final BooleanParam cudnnBenchmark;
  private final BooleanParam cudaGraphs;
  private final BooleanParam shardOptimizer;
  private final BooleanParam copyEngineCollectives;
  private final IntParam gemmSmCarveout;
  private final Param<String> gradientPrecision;
  private final Param<String> allReduceMode;

  /** The values of the {@code precision} param. */
  public static final String[] PRECISIONS = {"fp32", "bf16", "auto"};
  /** The values of {@link #setAllReduceMode}. */
  public static final String[] ALL_REDUCE_MODES = {"auto", "overlapped", "in_order"};
  /** The values of {@link #setGradientPrecision}. */
  public static final String[] GRADIENT_PRECISIONS = {"fp32", "bf16"};

  public SparkTrainer() {
    this(Identifiable$.MODULE$.randomUID("sparkTrainer"));
  }

  public SparkTrainer(String uid) {
    this.uid = uid;
    featuresCol = new Param<>(this, "featuresCol", "features column: vector, array of numbers or a number");
    featureCols = new StringArrayParam(this, "featureCols",
        "several numeric feature columns (used instead of featuresCol when not empty)");
    labelCol = new Param<>(this, "labelCol", "label column: class index (cross_entropy) or number (mse)");
    predictionCol = new Param<>(this, "predictionCol", "output column of the fitted model's predictions");
    probabilityCol = new Param<>(this, "probabilityCol", "output column of class probabilities (classifiers)");
    modelSpec = new Param<>(this, "modelSpec", "the network as ModelSpec JSON (see ModelSpec)");
    optimizer = new Param<>(this, "optimizer", "optimizer JSON, e.g. {\"type\":\"adamw\",\"lr\":0.001}");
    schedule = new Param<>(this, "schedule", "learning-rate schedule JSON: constant, step or cosine");
    loss = new Param<>(this, "loss", "loss: cross_entropy or mse",
        ParamValidators.inArray(new String[] {"cross_entropy", "mse"}));
    epochs = new IntParam(this, "epochs", "passes over the data (> 0)", ParamValidators.gt(0));
    batchSize = new IntParam(this, "batchSize", "per-worker batch size B (> 0); global batch = numWorkers * B",
        ParamValidators.gt(0));
    numWorkers = new IntParam(this, "numWorkers", "barrier tasks W: one per GPU (or per CPU worker)",
        ParamValidators.gt(0));
    device = new Param<>(this, "device", "cpu, cuda or auto (cuda when the task has a GPU)",
        ParamValidators.inArray(new String[] {"cpu", "cuda", "auto"}));
    seed = new LongParam(this, "seed", "random seed (weights, sampler, dropout)");
    dropLast = new BooleanParam(this, "dropLast",
        "drop the last partial global batch instead of padding it by wrapping rows");
    clipNorm = new DoubleParam(this, "clipNorm", "clip gradients to this global L2 norm (0 = off)",
        ParamValidators.gtEq(0));
    accumulation = new IntParam(this, "accumulation", "micro-batches per optimizer step (>= 1)",
        ParamValidators.gt(0));
    checkpointPath = new Param<>(this, "checkpointPath", "Hadoop path for checkpoints (empty = none)");
    checkpointInterval = new IntParam(this, "checkpointInterval", "checkpoint every N optimizer steps (0 = epoch ends)",
        ParamValidators.gtEq(0));
    timeoutSeconds = new IntParam(this, "timeoutSeconds",
        "a collective that waits longer than this fails the job instead of hanging", ParamValidators.gt(0));
    nonFinite = new Param<>(this, "nonFinite",
        "a step with NaN/Inf gradients: fail (the job fails naming the step) or skip (the update is skipped)",
        ParamValidators.inArray(new String[] {"fail", "skip"}));
    validationIndicatorCol = new Param<>(this, "validationIndicatorCol",
        "boolean column: rows where it is true are validation rows (evaluated after every epoch, not trained on), "
            + "the others training rows; empty = no validation set (or pass one to fit(train, validation))");
    precision = new Param<>(this, "precision",
        "fp32; bf16 (mixed precision: bf16 matmul/convolution inputs, fp32 accumulation, fp32 master weights, "
            + "gradients and optimizer state; on cpu only the linear layers round their inputs, for checking "
            + "numerics, with no speed-up); auto (bf16 on cuda, fp32 on cpu)",
        ParamValidators.inArray(PRECISIONS));
    cudnnBenchmark = new BooleanParam(this, "cudnnBenchmark",
        "cuda: choose convolution algorithms by timing them once per shape (as torch.backends.cudnn.benchmark; "
            + "sets -Dsparktrainer.cudnn.benchmark=true in the executor, read once per executor JVM); false: "
            + "cuDNN's heuristics, unless the executors were started with that property");
    cudaGraphs = new BooleanParam(this, "cudaGraphs",
        "cuda: capture each training step as a CUDA graph after 2 eager steps and replay it (same results, fewer "
            + "host launches: for small models; one GPU, the TCP ring, or several GPUs whose gradient all-reduce "
            + "runs in order (allReduceMode in_order, or auto on one host with <= 256 MiB of gradients); without "
            + "dropout or synchronised batch norm; other runs train eagerly)");
    shardOptimizer = new BooleanParam(this, "shardOptimizer",
        "cuda, several GPUs over NCCL: each rank updates its share of the weights and the shares are all-gathered "
            + "during backward (as ZeRO stage 1), the same weights bit for bit; where it cannot (clipNorm, "
            + "nonFinite=skip, accumulation, batch norm, in-order all-reduce) the ranks train unsharded and say why");
    copyEngineCollectives = new BooleanParam(this, "copyEngineCollectives",
        "cuda, several GPUs of one host over NCCL 2.28+, with shardOptimizer: the sharded optimizer's collectives run "
            + "on the GPUs' copy engines (NCCL zero-CTA all-to-all, or gathers at 2 GPUs, and all-gather over registered "
            + "buffers), leaving the SMs to backward; the same weights bit for bit at 2 GPUs; where it cannot, NCCL's "
            + "kernels as before, and each rank says why");
    allReduceMode = new Param<>(this, "allReduceMode",
        "cuda, several GPUs: how the gradient all-reduce runs beside backward: overlapped (on its own stream, as "
            + "PyTorch DDP), in_order (on the compute stream, between backward's kernels) or auto (in_order when all "
            + "ranks share a host and the gradients take at most 256 MiB, else overlapped); the same weights in "
            + "every mode", ParamValidators.inArray(ALL_REDUCE_MODES));
    gemmSmCarveout = new IntParam(this, "gemmSmCarveout",
        "cuda, several GPUs, all-reduce overlapped: SMs that backward's matrix multiplies leave free for NCCL's "
            + "kernels (Note [GEMM SM carve-out]); -1 (auto): a quarter of the GPU's SMs when all ranks share a host, "
            + "else 0; 0: none; it must be below the GPU's SM count", ParamValidators.gtEq(-1));
    gradientPrecision = new Param<>(this, "gradientPrecision",
        "fp32 (default) or bf16: the parameter gradients stored in bf16, as PyTorch's autocast computes them, "
            + "halving the gradient memory and the all-reduce's bytes; only where the model takes the fused linear "
            + "path on a GPU (bf16 precision, every layer with parameters a linear layer), else fp32; needs "
            + "accumulation 1", ParamValidators.inArray(GRADIENT_PRECISIONS));
    setDefault(precision, "fp32");
    setDefault(allReduceMode, "auto");
    setDefault(gemmSmCarveout, -1);
    setDefault(gradientPrecision, "fp32");
    setDefault(cudnnBenchmark, false);
    setDefault(cudaGraphs, false);
    setDefault(shardOptimizer, false);
    setDefault(copyEngineCollectives, false);
    setDefault(validationIndicatorCol, "");
    setDefault(nonFinite, "fail");
    setDefault(featuresCol, "features");
    setDefault(featureCols, new String[0]);
    setDefault(labelCol, "label");
    setDefault(predictionCol, "prediction");
    setDefault(probabilityCol, "probability");
    setDefault(optimizer, OptimizerConfig.adamw(1e-3).toJson());
    setDefault(schedule, LrSchedule.constant().toJson());
    setDefault(loss, "cross_entropy");
    setDefault(epochs, 1);
    setDefault(batchSize, 64);
    setDefault(numWorkers, 1);
    setDefault(device, "auto");
    setDefault(seed, 42L);
    setDefault(dropLast, false);
    setDefault(clipNorm, 0.0);
    setDefault(accumulation, 1);
    setDefault(checkpointPath, "");
    setDefault(checkpointInterval, 0);
    setDefault(timeoutSeconds, 300);
  }

  @Override
  public String uid() {
    return uid;
  }

  // ---- Param accessors (Spark finds params through these public no-arg methods) ----

  public Param<String> featuresCol() {
    return featuresCol;
  }

  public StringArrayParam featureCols() {
    return featureCols;
  }

  public Param<String> labelCol() {
    return labelCol;
  }

  public Param<String> predictionCol() {
    return predictionCol;
  }

  public Param<String> probabilityCol() {
    return probabilityCol;
  }

  public Param<String> modelSpec() {
    return modelSpec;
  }

  public Param<String> optimizer() {
    return optimizer;
  }

  public Param<String> schedule() {
    return schedule;
  }

  public Param<String> loss() {
    return loss;
  }

  public IntParam epochs() {
    return epochs;
  }

  public IntParam batchSize() {
    return batchSize;
  }

  public IntParam numWorkers() {
    return numWorkers;
  }

  public Param<String> device() {
    return device;
  }

  public LongParam seed() {
    return seed;
  }

  public BooleanParam dropLast() {
    return dropLast;
  }

  public DoubleParam clipNorm() {
    return clipNorm;
  }

  public IntParam accumulation() {
    return accumulation;
  }

  public Param<String> checkpointPath() {
    return checkpointPath;
  }

  public IntParam checkpointInterval() {
    return checkpointInterval;
  }

  public IntParam timeoutSeconds() {
    return timeoutSeconds;
  }

  public Param<String> nonFinite() {
    return nonFinite;
  }

  public Param<String> validationIndicatorCol() {
    return validationIndicatorCol;
  }

  public Param<String> precision() {
    return precision;
  }

  public BooleanParam cudnnBenchmark() {
    return cudnnBenchmark;
  }

  public BooleanParam cudaGraphs() {
    return cudaGraphs;
  }

  /** The param of {@link #setCopyEngineCollectives}. */
  public BooleanParam copyEngineCollectives() {
    return copyEngineCollectives;
  }

  /** The param of {@link #setShardOptimizer}. */
  public BooleanParam shardOptimizer() {
    return shardOptimizer;
  }

  public Param<String> allReduceMode() {
    return allReduceMode;
  }

  // ---- setters and getters ----

  public SparkTrainer setNonFinite(String v) {
    set(nonFinite, v);
    return this;
  }

  /**
   * Spark ML's idiom (as in GBTClassifier): rows of the fit's DataFrame where this boolean column is true are
   * validation rows, evaluated after every epoch and never trained on; rows where it is false are training
   * rows (null: neither). Default "" (none).
   */
  public SparkTrainer setValidationIndicatorCol(String v) {
    set(validationIndicatorCol, v);
    return this;
  }

  /**
   * The arithmetic of training: "fp32" (default), "bf16" or "auto" (bf16 on cuda, fp32 on cpu). bf16 is
   * mixed precision as in PyTorch's autocast: matmuls and convolutions read bf16 copies of their inputs and
   * weights and accumulate in fp32; the master weights, gradients, all-reduce and optimizer state stay fp32,
   * and the fitted model's weights are fp32. On the CPU engine bf16 only rounds the linear layers' inputs (a
   * way to check the numerics, no speed-up). Throws IllegalArgumentException for any other value.
   */
  public SparkTrainer setPrecision(String v) {
    set(precision, checkPrecision(v));
    return this;
  }

  /**
   * cuda only: {@code true} times the cuDNN convolution algorithms once per shape and keeps the fastest (as
   * {@code torch.backends.cudnn.benchmark}; faster CNN steps, results may differ in the last bits from run to
   * run). It sets the system property {@code sparktrainer.cudnn.benchmark=true} in each executor before its
   * first CUDA device is created; the property is read once per executor JVM, so an executor that already
   * trained on the GPU with the other setting keeps it (the task logs a warning: use fresh executors, or set
   * {@code -Dsparktrainer.cudnn.benchmark=true} in spark.executor.extraJavaOptions). Default false.
   */
  public SparkTrainer setCudnnBenchmark(boolean v) {
    set(cudnnBenchmark, v);
    return this;
  }

  /**
   * cuda only: {@code true} captures each training step's device work as a CUDA graph after two eager steps and
   * replays it (Note [CUDA graphs] in Trainer): the same weights, bit for bit, with far fewer host launches, which
   * is what limits small models (the Fashion-MNIST CNN trained 2-3x faster per GPU on an H100). Runs it does not
   * apply to (several GPUs over NCCL, dropout, synchronised batch norm, gradient accumulation) train eagerly and
   * say why in the task log. Default false.
   */
  public SparkTrainer setCudaGraphs(boolean v) {
    set(cudaGraphs, v);
    return this;
  }

  /**
   * cuda, several GPUs over NCCL: {@code true} shards the optimizer (Note [sharded optimizer] in Trainer, as PyTorch's
   * ZeroRedundancyOptimizer): each gradient bucket is reduce-scattered instead of all-reduced, each rank's optimizer
   * updates only its share of the weights, during backward, and the shares of the weights forward reads are
   * all-gathered. The trained weights are the same bits as unsharded; the full weights and optimizer state are
   * gathered before checkpoints and at the end. The benchmark MLP trained 4% faster on 2 H100s this way. Runs it
   * does not apply to (one GPU, the CPU engine, clipNorm, nonFinite skip, accumulation, batch norm, the in-order
   * all-reduce) train unsharded and each rank logs why. With nonFinite fail the check runs after the update: a
   * non-finite step still fails the fit. Default false.
   */
  public SparkTrainer setShardOptimizer(boolean v) {
    set(shardOptimizer, v);
    return this;
  }

  /**
   * cuda, several GPUs of one host, with {@link #setShardOptimizer}: {@code true} runs the sharded optimizer's
   * collectives on the GPUs' copy engines (Note [copy-engine collectives] in cuda.NcclCommunicator): each rank's
   * model is built in memory NCCL can register, the reduce-scatter becomes an all-to-all whose sums the update adds,
   * and the all-gathers move without SMs, so backward's matmuls keep nearly every SM. The benchmark MLP with bf16
   * gradients scaled 98% from one to two H100s this way, against 88-90% with NCCL's kernels. Needs NCCL 2.28.3 or
   * later; runs it does not apply to keep NCCL's kernels and each rank logs why. Default false.
   */
  public SparkTrainer setCopyEngineCollectives(boolean v) {
    set(copyEngineCollectives, v);
    return this;
  }

  /**
   * cuda, several GPUs over NCCL: how each step's gradient all-reduce runs beside backward (Note [in-order gradient
   * all-reduce] in Trainer): "overlapped" (each gradient bucket on the communicator's stream as soon as backward
   * has made it, as PyTorch DDP), "in_order" (on the compute stream, between backward's kernels: no overlap, but
   * no cost to the other kernels; ResNet-50 on 2 H100s scaled 98.1-98.7% this way, 97.6-98.0% overlapped) or
   * "auto" (default: in_order when all ranks run on one host and the fp32 gradients take at most 256 MiB, else
   * overlapped; an executor's -Dsparktrainer.train.allReduceMode, if set, decides instead). The trained weights are
   * the same bits in every mode. Throws IllegalArgumentException for any other value.
   */
  public SparkTrainer setAllReduceMode(String v) {
    set(allReduceMode, checkAllReduceMode(v));
    return this;
  }

  /**
   * cuda, several GPUs over NCCL whose all-reduce overlaps backward (allReduceMode overlapped, or auto with more than
   * 256 MiB of gradients or ranks on several hosts): how many SMs backward's cuBLASLt matrix multiplies leave free
   * for NCCL's kernels (Note [GEMM SM carve-out] in cuda.CudaDevice). -1 (default, auto): a quarter of the GPU's SMs
   * when all ranks run on one host, else 0 (an executor's -Dsparktrainer.train.gemmSmCarveout, if set, decides
   * instead); 0: none. The benchmark MLP (832 MiB of gradients) ran 6% faster at W = 2 on 2 H100s with the default
   * than with none. It must be below the GPU's SM count (checked when training starts, before any step).
   */
  public SparkTrainer setGemmSmCarveout(int v) {
    set(gemmSmCarveout, v);
    return this;
  }

  public IntParam gemmSmCarveout() {
    return gemmSmCarveout;
  }

  /** The carve-out of {@link #setGemmSmCarveout}: -1 (auto), 0 (none) or a number of SMs. */
  public int getGemmSmCarveout() {
    return (Integer) $(gemmSmCarveout);
  }

  /**
   * The dtype of the parameter gradients: "fp32" (default) or "bf16" (Note [bf16 gradients] in nn.Model). bf16
   * stores each gradient as PyTorch's autocast computes it for the bf16 copy of its parameter (the dW GEMM's
   * product rounded to bf16), halving the gradient memory and, on several GPUs, the all-reduce's bytes (NCCL sums
   * the bf16 values, as DDP's bf16 compression hook does); the master weights and optimizer state stay fp32. It
   * applies only where the model takes the fused linear path on a GPU: precision bf16 (or auto on cuda) and every
   * layer with parameters a linear layer; elsewhere (the CPU engine, fp32 precision, convolutions, batch norm) the
   * gradients stay fp32 (each rank logs a warning saying so). It needs accumulation 1 (a bf16 gradient would round
   * the micro-batches' sum at every micro-batch): fit refuses bf16 with accumulation > 1 before any task starts.
   * Default "fp32". Throws IllegalArgumentException for any other value.
   */
  public SparkTrainer setGradientPrecision(String v) {
    set(gradientPrecision, checkGradientPrecision(v));
    return this;
  }

  /** The param of {@link #setGradientPrecision}. */
  public Param<String> gradientPrecision() {
    return gradientPrecision;
  }

  /** "fp32" or "bf16" (see {@link #setGradientPrecision}). */
  public String getGradientPrecision() {
    return $(gradientPrecision);
  }

  public SparkTrainer setFeaturesCol(String v) {
    set(featuresCol, v);
    return this;
  }

  public SparkTrainer setFeatureCols(String[] v) {
    set(featureCols, v);
    return this;
  }

  public SparkTrainer setLabelCol(String v) {
    set(labelCol, v);
    return this;
  }

  public SparkTrainer setPredictionCol(String v) {
    set(predictionCol, v);
    return this;
  }

  public SparkTrainer setProbabilityCol(String v) {
    set(probabilityCol, v);
    return this;
  }

  /** The network, as a ModelSpec. */
  public SparkTrainer setModelSpec(ModelSpec v) {
    set(modelSpec, v.toJson());
    return this;
  }

  /** The network, as ModelSpec JSON (validated here, so a bad spec fails at once). */
  public SparkTrainer setModelSpec(String json) {
    set(modelSpec, ModelSpec.fromJson(json).toJson());
    return this;
  }

  public SparkTrainer setOptimizer(OptimizerConfig v) {
    set(optimizer, v.toJson());
    return this;
  }

  public SparkTrainer setOptimizer(String json) {
    set(optimizer, OptimizerConfig.fromJson(json).toJson());
    return this;
  }

  public SparkTrainer setSchedule(LrSchedule v) {
    set(schedule, v.toJson());
    return this;
  }

  public SparkTrainer setSchedule(String json) {
    set(schedule, LrSchedule.fromJson(json).toJson());
    return this;
  }

  public SparkTrainer setLoss(String v) {
    set(loss, v);
    return this;
  }

  public SparkTrainer setEpochs(int v) {
    set(epochs, v);
    return this;
  }

  public SparkTrainer setBatchSize(int v) {
    set(batchSize, v);
    return this;
  }

  public SparkTrainer setNumWorkers(int v) {
    set(numWorkers, v);
    return this;
  }

  public SparkTrainer setDevice(String v) {
    set(device, v);
    return this;
  }

  public SparkTrainer setSeed(long v) {
    set(seed, v);
    return this;
  }

  public SparkTrainer setDropLast(boolean v) {
    set(dropLast, v);
    return this;
  }

  public SparkTrainer setClipNorm(double v) {
    set(clipNorm, v);
    return this;
  }

  public SparkTrainer setAccumulation(int v) {
    set(accumulation, v);
    return this;
  }

  public SparkTrainer setCheckpointPath(String v) {
    set(checkpointPath, v);
    return this;
  }

  public SparkTrainer setCheckpointInterval(int v) {
    set(checkpointInterval, v);
    return this;
  }

  public SparkTrainer setTimeoutSeconds(int v) {
    set(timeoutSeconds, v);
    return this;
  }

  /** The model spec; throws with the fix when it was never set. */
  public ModelSpec getModelSpec() {
    if (!isDefined(modelSpec)) {
      throw new IllegalArgumentException("modelSpec is not set: call setModelSpec(ModelSpec.mlp(...)) or "
          + "setModelSpec(json) before fit");
    }
    return ModelSpec.fromJson($(modelSpec));
  }

  /** "fp32", "bf16" or "auto" (see {@link #setPrecision}). */
  public String getPrecision() {
    return $(precision);
  }

  public boolean getCudnnBenchmark() {
    return (Boolean) $(cudnnBenchmark);
  }

  public boolean getCudaGraphs() {
    return (Boolean) $(cudaGraphs);
  }

  /** Whether the sharded optimizer's collectives run on the copy engines (see {@link #setCopyEngineCollectives}). */
  public boolean getCopyEngineCollectives() {
    return (Boolean) $(copyEngineCollectives);
  }

  /** Whether the optimizer is sharded over the GPUs (see {@link #setShardOptimizer}). */
  public boolean getShardOptimizer() {
    return (Boolean) $(shardOptimizer);
  }

  /** "auto", "overlapped" or "in_order" (see {@link #setAllReduceMode}). */
  public String getAllReduceMode() {
    return $(allReduceMode);
  }

  /** {@code v} when it is a valid all-reduce mode, else an IllegalArgumentException that lists the choices. */
  public static String checkAllReduceMode(String v) {
    return checkChoice("allReduceMode", v, ALL_REDUCE_MODES, "overlapped: the gradient all-reduce beside backward "
        + "on its own stream; in_order: on the compute stream between backward's kernels");
  }

  /** {@code v} when it is a valid precision, else an IllegalArgumentException that lists the choices. */
  public static String checkPrecision(String v) {
    return checkChoice("precision", v, PRECISIONS, "bf16: mixed precision, bf16 matmul/convolution inputs with fp32 "
        + "master weights; auto: bf16 on cuda, fp32 on cpu");
  }

  /** {@code v} when it is a valid gradient precision, else an IllegalArgumentException that lists the choices. */
  public static String checkGradientPrecision(String v) {
    return checkChoice("gradientPrecision", v, GRADIENT_PRECISIONS, "bf16: bf16 parameter gradients where the model "
        + "takes the fused linear path on cuda, else fp32");
  }

  /** {@code v} when it is one of {@code choices}, else "NAME must be a, b or c, got 'v' (HELP)". */
  private static String checkChoice(String name, String v, String[] choices, String help) {
    if (v == null || !java.util.Arrays.asList(choices).contains(v)) {
      String list = String.join(", ", java.util.Arrays.copyOf(choices, choices.length - 1)) + " or "
          + choices[choices.length - 1];
      throw new IllegalArgumentException(name + " must be " + list + ", got " + (v == null ? "null" : "'" + v + "'")
          + " (" + help + ")");
    }
    return v;
  }

  public String getValidationIndicatorCol() {
    return $(validationIndicatorCol);
  }

  public String getFeaturesCol() {
    return $(featuresCol);
  }

  public String[] getFeatureCols() {
    return $(featureCols);
  }

  public String getLabelCol() {
    return $(labelCol);
  }

  public String getPredictionCol() {
    return $(predictionCol);
  }

  public String getProbabilityCol() {
    return $(probabilityCol);
  }

  public String getDevice() {
    return $(device);
  }

  public int getNumWorkers() {
    return (Integer) $(numWorkers);
  }

  public String getCheckpointPath() {
    return $(checkpointPath);
  }

  public int getCheckpointInterval() {
    return (Integer) $(checkpointInterval);
  }

  public int getTimeoutSeconds() {
    return (Integer) $(timeoutSeconds);
  }

  public Loss getLoss() {
    return Loss.parse($(loss));
  }

  /**
   * The training configuration these params describe (validated, with the checks across params that need no data
   * or device: bf16 gradients need accumulation 1).
   */
  public TrainerConfig trainerConfig() {
    int micro = (Integer) $(accumulation);
    if ("bf16".equals(getGradientPrecision()) && micro > 1) {
      // The Trainer refuses it too, but only where bf16 gradients apply (on a GPU, after the ranks started); this
      // fails every such fit on the driver, before any task, whatever the device.
      throw new IllegalArgumentException("gradientPrecision bf16 needs accumulation 1, got accumulation " + micro
          + " (a bf16 gradient would round the micro-batches' sum at every micro-batch): set accumulation to 1 or "
          + "gradientPrecision to fp32");
    }
    return TrainerConfig.builder()
        .epochs((Integer) $(epochs))
        .batchSize((Integer) $(batchSize))
        .seed((Long) $(seed))
        .optimizer(OptimizerConfig.fromJson($(optimizer)))
        .schedule(LrSchedule.fromJson($(schedule)))
        .loss(getLoss())
        .clipNorm((Double) $(clipNorm))
        .accumulation(micro)
        .dropLast((Boolean) $(dropLast))
        .nonFinite(TrainerConfig.NonFinitePolicy.parse($(nonFinite)))
        .build();
  }

  @Override
  public SparkTrainerModel fit(Dataset<?> dataset) {
    return fit(dataset, (Dataset<?>) null);
  }

  /**
   * Trains on {@code train} and evaluates the model on {@code validation} after every epoch, inside the
   * training stage (each worker evaluates a shard; the figures are summed over the workers). The validation
   * loss and accuracy of each epoch are in {@code model.summary()} and in the live progress. The validation
   * DataFrame needs the same feature and label columns and is checked like the training data, before any
   * task starts. {@code validation} null: as {@link #fit(Dataset)}.
   */
  public SparkTrainerModel fit(Dataset<?> train, Dataset<?> validation) {
    transformSchema(train.schema());
    TrainingJob.Result r = TrainingJob.run(train, validation, this);
    SparkTrainerModel m = new SparkTrainerModel(uid, getModelSpec(), getLoss(), r.parameters(), r.summary());
    m.withPrecision(r.summary().precision());
    m.setFeaturesCol(getFeaturesCol()).setFeatureCols(getFeatureCols())
        .setPredictionCol(getPredictionCol()).setProbabilityCol(getProbabilityCol());
    return m.setParent(this);
  }

  @Override
  public StructType transformSchema(StructType schema) {
    return SparkTrainerModel.outputSchema(schema, getPredictionCol(), getProbabilityCol(), getLoss(),
        isDefined(modelSpec) ? getModelSpec().outputSize() : 1);
  }

  @Override
  public SparkTrainer copy(ParamMap extra) {
    return defaultCopy(extra);
  }

  /** Reads an estimator saved with {@code write().save(path)}. */
  public static MLReader<SparkTrainer> read() {
    return new DefaultParamsReader<>();
  }

  public static SparkTrainer load(String path) {
    return read().load(path);
  }
}
