package dev.sparktrainer.train;

import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.checkpoint.CheckpointData;
import dev.sparktrainer.checkpoint.CheckpointException;
import dev.sparktrainer.checkpoint.CheckpointIO;
import dev.sparktrainer.checkpoint.Checkpoints;
import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.data.BatchLoader;
import dev.sparktrainer.data.HostBatch;
import dev.sparktrainer.data.RowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.GradientSlices;
import dev.sparktrainer.engine.GraphCaptureException;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Rng;
import dev.sparktrainer.engine.StepGraph;
import dev.sparktrainer.engine.StepTimeline;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.Optimizer;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.function.Consumer;

/**
 * The training loop of one rank. Knows no Spark: it gets a model on a device, a communicator, and the rank's
 * rows in local order (from the sampler plan), and runs the same number of steps as every other rank.
 *
 * <p>Per optimizer step: zero grads -> for each micro-batch: upload, forward, loss (scaled by
 * 1 / (W * B * micro-batches), so the all-reduced sum is the global mean gradient), backward -> one
 * all-reduce of the flat gradient buffer -> optional clipping by global norm -> one fused optimizer call.
 * Collectives are issued in the same order and number on every rank.
 *
 * <p>On the GPU the same step runs with fewer waits: the next batch is copied on a copy stream while this one
 * computes (device.prefetch), the gradient buffer is all-reduced in buckets while backward runs (Note
 * [gradient buckets]), the fused mixed-precision path writes gradients instead of zeroing and adding
 * (Model.canOverwriteGradients), and the host waits for the collectives only after queueing the optimizer.
 * Opt-in, a static step's device work is captured once as a CUDA graph and replayed ({@link #cudaGraphs},
 * Note [CUDA graphs]).
 */
public final class Trainer {
  private static final System.Logger LOG = System.getLogger(Trainer.class.getName());
  /** -Dsparktrainer.cuda.graphs=true: the default of {@link #cudaGraphs(boolean)} (false when unset). */
  public static final String CUDA_GRAPHS_PROPERTY = "sparktrainer.cuda.graphs";
  /** Steps of each fit call that run eagerly before the first capture (buffers, pool, plans are made). */
  static final int GRAPH_WARMUP_STEPS = 2;
  private final Model model;
  private final TrainerConfig config;
  private final Communicator comm;
  private final Device device;
  private final Optimizer optimizer;
  private Consumer<Long> stepListener = s -> { };
  private Consumer<EpochStats> epochListener = e -> { };
  private boolean epochListening; // an epoch listener was set: under sharding, each epoch ends consolidated
  private boolean listening; // a listener was set: it may read device memory, so buckets are awaited first
  private long optimizerStep;
  private CheckpointPolicy checkpoints;
  // Note [non-finite check]: with nonFinite=fail and no clipping, the check costs a reduction (and on GPU
  // a wait) per step; it runs every step by default. Turning it off leaves NaNs to show in the loss.
  private boolean checkEveryStep = true;
  private org.apache.hadoop.conf.Configuration hadoopConf;
  private long firstBucketBytes = 1L << 20;
  private boolean stepTimeline = Boolean.getBoolean("sparktrainer.train.timeline");
  private boolean timelineByLayer = Boolean.getBoolean("sparktrainer.train.timelineLayers");
  private AllReduceMode allReduceMode = AllReduceMode.parse(System.getProperty("sparktrainer.train.allReduceMode",
      "AUTO"));
  private final List<Map<String, Double>> timelines = new ArrayList<>();
  private long bucketBytesUsed; // the last fit's choice of bucketBytes
  private long bucketBytes; // gradientBuckets, or 0: DEFAULT_BUCKET_BYTES (COPY_ENGINE_BUCKET_BYTES on copy engines)
  private boolean overlapBuckets = true; // this fit's choice (allReduceMode)
  private int bucketWaitLag = checkLag(Integer.getInteger(BUCKET_WAIT_LAG_PROPERTY, 1)); // Note [bucket wait lag]
  private int gemmSmCarveout = checkCarveout(Integer.getInteger(GEMM_SM_CARVEOUT_PROPERTY, GEMM_SM_CARVEOUT_AUTO));
  private int carveNow; // this fit's carve-out (gemmSmCarveout resolved)
  private boolean bf16AllReduce;
  private Tensor gradsLow; // bf16 copy of the gradients for the all-reduce, or null
  private boolean cudaGraphs = Boolean.getBoolean(CUDA_GRAPHS_PROPERTY);
  private boolean shardOptimizer = Boolean.getBoolean(SHARD_OPTIMIZER_PROPERTY);
  private boolean copyEngine = Boolean.getBoolean(COPY_ENGINE_PROPERTY);
  private Boolean layerBuckets = System.getProperty(LAYER_BUCKETS_PROPERTY) == null ? null
      : Boolean.getBoolean(LAYER_BUCKETS_PROPERTY); // layerAlignedBuckets, or null: under sharding only
  private Tensor shardRecv; // the all-to-all's receive buffer under Note [copy-engine collectives], or null
  private boolean copyEngineNow; // this fit's sharded collectives go by all-to-all into shardRecv
  private String copyEngineOff; // why this fit's sharded collectives use SMs although copy engines were asked, or null
  private ShardPlan shards; // this fit's Note [sharded optimizer] plan, or null
  private Tensor shardGather; // what the ranks all-gather after their updates (gatherTarget), with shards
  private boolean shardsStale; // steps since the last consolidateShards left other ranks' slices stale here
  private Tensor nonFiniteFlag; // (1) the sharded non-finite check's all-reduced flag
  private String shardingOff; // why this fit's optimizer is not sharded although asked, or null
  private long graphCaptures; // steps whose device work was captured (and run from the graph)
  private long graphReplays; // steps whose device work was a replay
  private String graphsOff; // why steps run eagerly although graphs were asked for, or null

  public Trainer(Model model, TrainerConfig config, Communicator comm) {
    this.model = model;
    this.config = config;
    this.comm = comm;
    this.device = model.device();
    this.optimizer = config.optimizer().create(device, model.parameters());
  }

  /** Called at the end of every epoch with this rank's statistics (live progress reports them). */
  public Trainer onEpochEnd(Consumer<EpochStats> listener) {
    this.epochListener = listener;
    this.epochListening = true;
    return this;
  }

  /**
   * Called after every optimizer step with the step number (tests check invariants here). It may read device memory:
   * the host waits for the step's collectives first, and the optimizer is not sharded (Note [sharded optimizer]).
   */
  public Trainer onStep(Consumer<Long> listener) {
    this.stepListener = listener;
    this.listening = true;
    return this;
  }

  /**
   * Called after every optimizer step is queued, with the step number, for progress (logs, reports, fault
   * injection): it must not read device memory, which may still be in flight.
   */
  public Trainer onStepProgress(Consumer<Long> listener) {
    this.stepListener = listener;
    this.listening = false;
    return this;
  }

  /** How the gradient buckets' all-reduces run beside backward (Note [in-order gradient all-reduce]). */
  public enum AllReduceMode {
    /**
     * IN_ORDER when all ranks run on one host and the model's fp32 gradients take at most
     * {@link #OVERLAP_MIN_BYTES}, else OVERLAPPED.
     */
    AUTO,
    /** Each bucket on the communicator's own stream as soon as backward has made it, overlapping the rest. */
    OVERLAPPED,
    /** Each bucket between the backward kernels that make it and the next ones, on the compute stream. */
    IN_ORDER;

    /** The mode named {@code name}, in any case ("in_order" or "IN_ORDER"). */
    public static AllReduceMode parse(String name) {
      return valueOf(name.trim().toUpperCase(java.util.Locale.ROOT));
    }
  }

  /**
   * AUTO overlaps the gradient all-reduce with backward only above this many bytes of fp32 gradients (256 MiB).
   * Note [in-order gradient all-reduce]: on 2 H100s over NVLink, ResNet-50 (98 MiB of gradients) ran 1.1% faster
   * with its buckets in order than overlapped: its all-reduce takes ~0.55 ms in series, while overlapping it
   * made every kernel of the step start later after the one before (a median gap of 2.7 -> 4.0 us, CUPTI trace;
   * ~0.9 ms of its ~720 kernels) for as long as all-reduces waited on the comm stream for backward work not yet
   * done, forward included, and slowed the backward kernels they ran beside. The measurements are in
   * benchmarks/results/2026-11-26-diagnostics/README.md; a model with little compute per gradient byte (the
   * benchmark MLP: 832 MiB) keeps the overlap, and so does any job whose ranks span hosts: there the all-reduce
   * crosses a network many times slower than NVLink, and hiding it behind backward is worth more than ~1 us per
   * kernel (not measured here: no multi-host GPUs).
   */
  public static final long OVERLAP_MIN_BYTES = 256L << 20;

  /**
   * How the gradient all-reduce runs beside backward on an asynchronous communicator with W > 1 (NCCL): see
   * {@link AllReduceMode}. The sums, and so the trained parameters, are the same bits in every mode (the same
   * buckets, the same collectives). Default: -Dsparktrainer.train.allReduceMode (AUTO).
   */
  public Trainer allReduceMode(AllReduceMode mode) {
    this.allReduceMode = java.util.Objects.requireNonNull(mode, "mode");
    return this;
  }

  /**
   * Whether a fit with {@code gradientBytes} of fp32 gradients overlaps its all-reduce with backward, its ranks
   * all on one host or not.
   */
  public static boolean overlapsAllReduce(AllReduceMode mode, long gradientBytes, boolean oneHost) {
    return switch (mode) {
      case OVERLAPPED -> true;
      case IN_ORDER -> false;
      case AUTO -> !oneHost || gradientBytes > OVERLAP_MIN_BYTES;
    };
  }

  /**
   * All-reduce the gradient buckets in bf16 instead of fp32 (half the bytes on the wire), as PyTorch DDP's
   * bf16 compression hook: each bucket is rounded to bf16 once it is final, summed in bf16 by NCCL, and the
   * sums are widened back to the fp32 gradients before the optimizer. Only on the bucketed path (an
   * asynchronous communicator, W > 1); elsewhere it has no effect, and so with bf16 gradients (Note [bf16
   * gradients] in nn.Model), which are all-reduced as they are. Default false.
   */
  public Trainer bf16GradientAllReduce(boolean on) {
    this.bf16AllReduce = on;
    return this;
  }

  // Note [CUDA graphs]: a small model's step is bound by the host, not the GPU. The Fashion-MNIST CNN at batch
  // 512 in bf16 queues ~60 kernels, cuDNN convolutions and cuBLASLt matmuls per step (~1.3 ms on an H100), and
  // most of that time is the launch path on the host (JCuda, JNI, cuDNN's and cuBLASLt's own host code). With
  // cudaGraphs(true) the trainer records a step's device work once as a CUDA graph (Device#captureGraph) and
  // later queues it again with one launch (StepGraph#replay).
  // - What is captured: zeroGrad (nothing on the overwrite path), forward, loss, backward, sumInto of the
  //   losses and countCorrect. What stays eager, around it: awaitPrefetch and staging the next batch (host
  //   data), the non-finite check and clipping (they read the norm on the host), the optimizer step (its
  //   learning rate changes every step and is a kernel argument), listeners and checkpoints. A replay runs the
  //   same kernels on the same memory with the same arguments in the same order, so the result is bitwise the
  //   eager one (CudaGraphTest; TrainerGraphTest checks the trainer's side on the CPU by recording and replaying
  //   the ops).
  // - Static steps only: a step must allocate nothing and touch the same addresses every time. That holds once
  //   the layers have their buffers (Layer.buffer), the gradient pool has grown to the step (it hands out its
  //   buffers in the same order every step) and cuDNN and cuBLASLt have planned every shape, so the first
  //   GRAPH_WARMUP_STEPS steps of each fit call run eagerly. The two input slots have different addresses: each
  //   gets its own graph, captured the first time it comes up after the warm-up. The graphs belong to the fit
  //   call (its slots and accumulators) and are closed when it returns.
  // - Eligible runs (graphIneligibility): no all-reduce overlapping backward (NCCL with W > 1 whose buckets go on
  //   the comm stream keeps the eager path), accumulation 1, no dropout (its mask seed changes every step), no
  //   synchronised batch norm (collectives inside the step). With in-order buckets (Note [in-order gradient
  //   all-reduce]) the graph holds the step without them and the buckets follow it eagerly, the same slices in
  //   the same order on the compute stream, so the sums are bitwise the eager step's and every collective is
  //   issued and waited for under the communicator's watchdog as before (none is captured). W = 1 and the TCP
  //   ring, whose one all-reduce follows the step, are eligible as they were.
  // - The device refuses what it cannot capture (CudaDevice: the op profile, any allocation, free, host transfer
  //   or host wait during the capture, a library call that fails under capture): GraphCaptureException, and
  //   none of the step's device work ran. The trainer then gives the model's transient gradients back (the
  //   capture may have stopped inside backward: Model#discardStep), runs the step eagerly and stays eager for
  //   the rest of the run, logged once with the reason; likewise when a graph can no longer be replayed
  //   (StepGraph#replay false: memory it uses was freed). A device without graphs (the CPU engine) runs the work
  //   and returns null: the run is exactly the eager one.
  // Off by default (-Dsparktrainer.cuda.graphs=true or cudaGraphs(true) turn it on). Measured on 2x H100
  // (benchmarks/results/2026-11-26-h100x2-final-graphs-*): the Fashion-MNIST CNN at batch 512 runs at 928k
  // samples/s with graphs against 327k-445k eager in the same session, bitwise the eager run (CudaGraphTest);
  // ResNet-50 is GPU-bound and unchanged. It stays opt-in until the whole GPU suite has run with it on (this
  // session ran it with graphs off). An earlier W > 1 variant was tried and removed: with the all-reduce captured,
  // NCCL 2.28 failed on 2x H100 ("the operation cannot be performed in the present state": a non-blocking
  // communicator queues from a thread of its own); with the whole gradient all-reduced after the graph by the
  // blocking path, the ranks' parameters diverged in CudaFashionMnistTest. The buckets after the graph above are
  // checked against the eager run by CudaGraphTest.

  /**
   * Capture each training step's device work as a CUDA graph after {@value #GRAPH_WARMUP_STEPS} eager warm-up
   * steps and replay it (Note [CUDA graphs]): the same results, fewer host launches. Only for eligible runs (one
   * micro-batch per optimizer step, no all-reduce inside backward, no dropout or synchronised batch norm); others,
   * and devices without graphs, run eagerly (the reason is logged once and given by {@link #graphsOffReason()}).
   * Default: the system property {@value #CUDA_GRAPHS_PROPERTY}, else false.
   */
  public Trainer cudaGraphs(boolean on) {
    this.cudaGraphs = on;
    return this;
  }

  /** Steps whose device work ran from a CUDA graph so far: captured ones plus replays (Note [CUDA graphs]). */
  public long graphSteps() {
    return graphCaptures + graphReplays;
  }

  /** Steps whose device work was a replay of a captured graph so far. */
  public long graphReplays() {
    return graphReplays;
  }

  /**
   * Why steps run eagerly although CUDA graphs were asked for (an ineligible run, a device without graphs, a
   * failed capture), or null.
   */
  public String graphsOffReason() {
    return graphsOff;
  }

  /** Whether steps check their gradients for NaN/Inf when nothing else needs the norm (default true). */
  public Trainer checkNonFinite(boolean everyStep) {
    this.checkEveryStep = everyStep;
    return this;
  }

  /**
   * Rank 0 writes checkpoints under this policy (other ranks never write). Give every rank the same policy: under
   * Note [sharded optimizer] each checkpoint first gathers the weights and optimizer state, a collective.
   */
  public Trainer checkpointing(CheckpointPolicy policy, org.apache.hadoop.conf.Configuration conf) {
    this.checkpoints = policy;
    this.hadoopConf = conf;
    return this;
  }

  /**
   * Restores weights, optimizer state and the step counter from a checkpoint (all ranks restore the same
   * one), so {@link #fit} continues where it was written: same data order, same dropout masks, same
   * schedule position. Call instead of {@link #initializeWeights}.
   */
  public void resume(CheckpointData ckpt) throws CheckpointException {
    ObjectNode extra = ckpt.extra();
    long[][] checks = {{extra.path("seed").asLong(config.seed()), config.seed()},
        {extra.path("worldSize").asLong(comm.worldSize()), comm.worldSize()},
        {extra.path("batchSize").asLong(config.batchSize()), config.batchSize()}};
    String[] names = {"seed", "number of workers", "batch size"};
    for (int i = 0; i < checks.length; i++) {
      if (checks[i][0] != checks[i][1]) {
        throw new CheckpointException("checkpoint at step " + ckpt.step() + " was written with " + names[i] + " "
            + checks[i][0] + " but this job has " + checks[i][1] + "; resuming would not continue the same run. "
            + "Use the same settings or another checkpoint directory");
      }
    }
    Checkpoints.restore(ckpt, model, optimizer);
    optimizerStep = optimizer.steps();
  }

  public Optimizer optimizer() {
    return optimizer;
  }

  public Model model() {
    return model;
  }

  /** Initialises the weights from the seed and makes every rank hold rank 0's weights. */
  public void initializeWeights() {
    model.initialize(config.seed());
    comm.broadcast(model.parameters().params(), 0);
  }

  /**
   * Trains all epochs on this rank's rows.
   *
   * @param store the rows this rank may read
   * @param local the rank's rows in local order (indices into store), stepsPerEpoch * batch long
   * @param stepsPerEpoch micro-batches per epoch, equal on every rank
   */
  public List<EpochStats> fit(RowStore store, int[] local, int stepsPerEpoch) {
    int b = config.batchSize();
    if ((long) stepsPerEpoch * b != local.length) {
      throw new IllegalArgumentException("rank " + comm.rank() + " holds " + local.length + " rows, expected "
          + (long) stepsPerEpoch * b + " (" + stepsPerEpoch + " steps x batch " + b + ")");
    }
    if (stepsPerEpoch <= 0) {
      throw new IllegalArgumentException("rank " + comm.rank() + " has no batch to train on");
    }
    int accum = config.accumulation();
    Tensor grads = model.parameters().grads();
    if (grads.dtype() == DType.BFLOAT16 && accum != 1) {
      throw new IllegalArgumentException("bf16 gradients (Note [bf16 gradients] in nn.Model) need accumulation 1, got "
          + accum + ": micro-batch sums would be rounded to bf16 every time; use fp32 gradients to accumulate");
    }
    long totalOptSteps = (long) config.epochs() * ((stepsPerEpoch + accum - 1) / accum);
    LrSchedule schedule = config.schedule().withDefaultTotal(totalOptSteps);
    int dim = store.dim();
    int outDim = model.spec().outputSize();
    Loss loss = config.loss();
    // Two input slots: batch t+1 is copied (device.prefetch, a copy stream on GPU) while step t computes.
    DType inDType = model.inputDType(); // Note [bf16 input] in Model
    Tensor[] xs = {device.allocate(inDType, b, dim), device.allocate(inDType, b, dim)};
    Tensor[] ys = new Tensor[2];
    for (int k = 0; k < 2; k++) {
      ys[k] = loss == Loss.CROSS_ENTROPY ? device.allocate(DType.INT32, b)
          : device.allocate(DType.FLOAT32, b, store.targetDim());
    }
    Tensor losses = device.allocate(DType.FLOAT32, b);
    Tensor dOut = device.allocate(model.outputGradDType(), b, outDim); // FLOAT32 except on the fused path
    Tensor lossSum = device.allocate(DType.FLOAT32, 1);
    Tensor correct = device.allocate(DType.FLOAT32, 1);
    float gradScale = 1f / ((float) b * comm.worldSize() * accum);
    // Note [gradient buckets]: with a communicator whose all-reduce is asynchronous (NCCL) and W > 1, the
    // flat gradient buffer is all-reduced in contiguous buckets, last parameters first (DDP's order: the
    // first bucket ~1 MiB, then ~25 MiB), each started as soon as backward has written all of its gradients:
    // on the comm stream, overlapping the rest of backward, or in order on the compute stream (AllReduceMode;
    // Note [in-order gradient all-reduce] says when which pays). Buckets are fixed slices and
    // are started in index order, so every rank issues the same collectives in the same order. Other
    // communicators (the TCP ring) keep one all-reduce of the whole buffer: slicing would change the ring's
    // summation order, and the CPU results must stay bitwise the same.
    // Note [one in-order all-reduce]: buckets in order (AllReduceMode) overlap nothing: each waits on the compute
    // stream for the backward kernels before it and holds back those after. So in order the whole buffer goes in one
    // all-reduce after backward: one NCCL call and one meeting of the ranks per step instead of one per bucket, and
    // NCCL's better bandwidth for larger messages (1 GiB: 330 GB/s; 25 MiB: 224 GB/s on 2 H100s). The Fashion-MNIST
    // CNN's 1.7 MB of gradients had been two all-reduces (1 MiB + the rest), ResNet-50's 98 MiB five. At W = 2 the
    // sums are the same bits either way (one addition per element); the bucket sizes apply to overlapped buckets.
    boolean bucketed = comm.supportsAsync() && comm.worldSize() > 1;
    long total = model.parameters().totalElements();
    int gradBytes = grads.dtype() == DType.BFLOAT16 ? 2 : 4;
    overlapBuckets = overlapsAllReduce(allReduceMode, gradBytes * total, comm.allRanksOnOneHost());
    shardingOff = shardOptimizer ? shardingIneligibility(bucketed && overlapBuckets, accum) : null;
    boolean sharding = shardOptimizer && shardingOff == null;
    shards = null; // until this fit's plan (below): nothing may take an earlier fit's
    copyEngineOff = !copyEngine || sharding ? null
        : shardOptimizer ? "the optimizer is not sharded: " + shardingOff : "they serve the sharded optimizer only"
            + " (shardOptimizer)";
    copyEngineNow = false;
    if (sharding && copyEngine) {
      if (gemmSmCarveout > 0) {
        device.gemmSmCarveout(gemmSmCarveout); // a bad value fails here, before the registration's collectives
        device.gemmSmCarveout(0);
      }
      // Note [copy-engine collectives] (cuda.NcclCommunicator): the reduce-scatter becomes an all-to-all into
      // shardRecv, summed by updateShards; the all-gathers read and write shardGather. A fit that failed left its
      // receive buffer registered: this one uses it again (the communicator then registers nothing new).
      if (shardRecv == null) {
        shardRecv = device.allocateRegistrable(grads.dtype(), Math.toIntExact(grads.numel()));
      }
      copyEngineOff = comm.registerCopyEngineBuffers(List.of(grads, shardRecv, gatherTarget()));
      copyEngineNow = copyEngineOff == null;
    }
    // Note [sharded optimizer]: its buckets end at layer boundaries (bucketStarts), which shortens the step's tail
    boolean byLayer = layerBuckets != null ? layerBuckets : sharding;
    long size = bucketBytes > 0 ? bucketBytes : copyEngineNow ? COPY_ENGINE_BUCKET_BYTES : DEFAULT_BUCKET_BYTES;
    bucketBytesUsed = size;
    long[] bucketStarts = !bucketed ? null : !overlapBuckets ? new long[] {total, 0}
        : bucketStarts(total, gradBytes, byLayer ? model.gradientReadyOffsets() : new long[0], size);
    if (!bf16AllReduce) {
      gradsLow = null; // an earlier fit's hook: this fit all-reduces the gradients as they are
    }
    if (bucketed && bf16AllReduce && gradsLow == null && grads.dtype() == DType.FLOAT32) {
      gradsLow = device.allocate(DType.BFLOAT16, Math.toIntExact(grads.numel()));
    }
    if (shardOptimizer) {
      if (sharding) {
        shards = ShardPlan.of(bucketStarts, comm.worldSize(), comm.rank());
        shardGather = gatherTarget();
        LOG.log(System.Logger.Level.INFO, "rank {0}: sharded optimizer over {1} of {2} elements ({3} ranks)",
            comm.rank(), shards.shardedElements(), total, comm.worldSize());
      } else {
        LOG.log(System.Logger.Level.WARNING, "rank {0}: the optimizer is not sharded: {1}", comm.rank(), shardingOff);
      }
    }
    if (copyEngineNow) {
      LOG.log(System.Logger.Level.INFO, "rank {0}: the collectives of the sharded optimizer run on the copy engines",
          comm.rank());
    } else if (copyEngineOff != null && comm.worldSize() > 1) {
      LOG.log(System.Logger.Level.WARNING, "rank {0}: copy-engine collectives are off: {1}", comm.rank(), copyEngineOff);
    }
    carveNow = resolvedGemmSmCarveout(bucketed);
    if (carveNow > 0) {
      device.gemmSmCarveout(carveNow); // checks it against the GPU's SMs before any step
      device.gemmSmCarveout(0);
    }

    if (cudaGraphs && graphsOff == null) {
      String why = graphIneligibility(bucketed && overlapBuckets, accum);
      if (why != null) {
        graphsOff(null, why, System.Logger.Level.INFO);
      }
    }
    boolean useGraphs = cudaGraphs && graphsOff == null;
    StepGraph[] graphs = new StepGraph[2]; // per input slot (Note [CUDA graphs])

    long optStepsPerEpoch = (stepsPerEpoch + accum - 1) / accum;
    int firstEpoch = (int) (optimizerStep / optStepsPerEpoch);
    List<EpochStats> stats = new ArrayList<>();
    // On resume, the first epoch skips the micro-batches whose optimizer steps are done.
    int firstSkip = firstEpoch >= config.epochs() ? 0
        : (int) Math.min(stepsPerEpoch, (optimizerStep - firstEpoch * optStepsPerEpoch) * accum);
    // Note [one loader per fit]: one BatchLoader serves every epoch of the fit, each epoch's shuffle made on its
    // thread when it gets there, so its host buffers (ResNet-50: 3 x 154 MB) are allocated once, and the next
    // epoch's first batch is gathered and staged during the last step of the one before: the GPU does not wait
    // for the host at an epoch boundary (it did, ~5% of a 20-step ResNet-50 epoch, measured as data wait).
    int epochsLeft = Math.max(0, config.epochs() - firstEpoch);
    int stepsRun = 0; // micro-steps run in this fit: their parity picks the input slot
    StepTimeline timeline = stepTimeline ? device.newTimeline() : null; // Note [step timeline]
    if (timeline != null && timelineByLayer && !useGraphs) {
      model.markLayers(timeline); // the timeline split by top-level layer
    }
    long batchBytes = (long) b * store.dim() * (inDType == DType.BFLOAT16 ? 2 : 4);
    try (BatchLoader loader = new BatchLoader(store, b, BatchLoader.defaultDepth(batchBytes), epochsLeft, i -> {
      int epoch = firstEpoch + i;
      int[] order = epochOrder(local, epoch);
      int skip = i == 0 ? firstSkip : 0;
      return new BatchLoader.Segment(skip == 0 ? order : java.util.Arrays.copyOfRange(order, skip * b,
          order.length), stepsPerEpoch - skip);
    }, BatchLoader.defaultThreads(), inDType == DType.BFLOAT16)) {
      boolean staged = false; // whether the next batch is already queued into slot stepsRun & 1
      for (int epoch = firstEpoch; epoch < config.epochs(); epoch++) {
        int skip = epoch == firstEpoch ? firstSkip : 0;
        device.fill(lossSum, 0f);
        device.fill(correct, 0f);
        long t0 = System.nanoTime();
        long commNanos = 0;
        long skipped = 0;
        long wait0 = loader.waitNanos();
        int micro = 0;
        if (skip < stepsPerEpoch && !staged) {
          stage(loader.next(), xs[stepsRun & 1], ys[stepsRun & 1]);
          staged = true;
        }
        for (int t = skip; t < stepsPerEpoch; t++) {
          int slot = stepsRun++ & 1;
          Tensor x = xs[slot];
          Tensor y = ys[slot];
          mark(timeline, "between steps");
          device.awaitPrefetch(); // this step's batch, queued one step earlier
          if (useGraphs) {
            // the device's wait for this step's input, apart from the replayed step (eager steps have it in
            // "input wait + zero grad")
            mark(timeline, "input wait");
          }
          staged = t + 1 < stepsPerEpoch || epoch + 1 < config.epochs();
          if (staged && !useGraphs) {
            stage(loader.next(), xs[slot ^ 1], ys[slot ^ 1]); // copied while this step computes
          }
          boolean last = t == stepsPerEpoch - 1;
          int groupSize = micro + 1;
          // The optimizer step closes this group now if it is full; a short last group is scaled first,
          // so it takes the one-buffer path below.
          boolean closes = micro + 1 == accum || last;
          boolean useBuckets = bucketed && closes && groupSize == accum;
          boolean overwrite = micro == 0 && model.canOverwriteGradients();
          Layer.Context ctx = new Layer.Context(true, config.seed(), optimizerStep * accum + micro, comm);
          if (useGraphs) {
            // Note [CUDA graphs]: one micro-batch per step and no buckets, so this is all of the step's device
            // work before the optimizer: the ops of the eager branch below, in its order.
            Runnable work = () -> {
              if (!overwrite) {
                model.zeroGrad();
              }
              Tensor out = model.forward(x, ctx);
              loss.compute(device, out, y, losses, dOut, gradScale);
              model.backward(dOut, ctx, overwrite, null);
              device.sumInto(losses, lossSum);
              if (loss == Loss.CROSS_ENTROPY) {
                device.countCorrect(out, y, correct);
              }
            };
            // Note [staging after the launch]: the next batch is staged once this step's graph is queued, so the
            // host's wait for the loader and its copy into pinned memory happen while the GPU runs the step, not
            // before it gets it; its copy waits only for the work queued before this step (markPrefetchOrder: the
            // last readers of slot ^ 1). At W = 2 the rank thread runs about one step ahead of its GPU (Note
            // [deferred bucket wait]), and small-cnn's replayed step (~0.51 ms on an H100) had grown by up to 0.16 ms
            // of GPU idling while the host staged. Measured after (two suites on 2 H100s, benchmarks/README.md): no
            // difference two runs could show (small-cnn W=2 1.74M / 1.79M samples/s against 1.77M / 1.78M before).
            device.markPrefetchOrder();
            graphStep(graphs, slot, stepsRun - 1, work); // every step of the fit takes this path
            if (staged) {
              stage(loader.next(), xs[slot ^ 1], ys[slot ^ 1]); // copied while this step computes
            }
            mark(timeline, "step (CUDA graph)");
            if (useBuckets) {
              // Note [CUDA graphs], W > 1: the in-order buckets follow the graph, eager, in the order and slices
              // of the eager step's; the last step's are waited for now, with this step's work queued.
              commNanos += awaitBucketsLagged();
              for (int k = 0; k < bucketStarts.length - 1; k++) {
                launchBucket(grads, bucketStarts, k);
              }
              joinBuckets(grads);
              mark(timeline, "all-reduce (buckets)");
            }
          } else {
            if (micro == 0 && !overwrite) {
              model.zeroGrad();
            }
            mark(timeline, "input wait + zero grad");
            Tensor out = model.forward(x, ctx);
            float scale = gradScale;
            loss.compute(device, out, y, losses, dOut, scale);
            mark(timeline, "forward + loss");
            if (bucketed) {
              // Note [deferred bucket wait]: the device already orders this step after the last step's
              // buckets (joinAsync); the host waits for them under the watchdog only now, with this step's
              // forward queued, so the GPU never idles while the host waits or prepares the next batch.
              commNanos += awaitBucketsLagged();
            }
            if (useBuckets) {
              int[] next = {0};
              List<Integer> pending = new ArrayList<>(); // Note [sharded optimizer]: buckets not updated yet
              double lr = schedule.lr(config.optimizer().lr(), optimizerStep);
              boolean carve = carveNow > 0; // Note [GEMM SM carve-out] in CudaDevice: 0 unless buckets overlap backward
              if (carve) {
                device.gemmSmCarveout(carveNow);
              }
              try {
                model.backward(dOut, ctx, overwrite, readyFrom -> {
                  List<Integer> older = null;
                  if (shards != null) {
                    if (!pending.isEmpty()) {
                      comm.joinAsync(); // the older buckets' collectives, before their update
                    }
                    older = new ArrayList<>(pending);
                    pending.clear();
                    if (!copyEngineNow) {
                      updateShards(older, lr); // those of the layers before: their dx is queued already
                    }
                  }
                  while (next[0] < bucketStarts.length - 1 && bucketStarts[next[0] + 1] >= readyFrom) {
                    pending.add(next[0]);
                    launchBucket(grads, bucketStarts, next[0]++);
                  }
                  if (shards != null && copyEngineNow) { // Note [copy-engine collectives]: after the new all-to-alls
                    updateShards(older, lr);
                  }
                });
              } finally {
                if (carve) {
                  device.gemmSmCarveout(0);
                }
              }
              while (next[0] < bucketStarts.length - 1) {
                pending.add(next[0]);
                launchBucket(grads, bucketStarts, next[0]++);
              }
              mark(timeline, "backward");
              joinBuckets(grads); // also what updateShards needs: the compute stream waits for every collective
              mark(timeline, "all-reduce wait (buckets)");
              if (shards != null) {
                updateShards(pending, lr);
              }
            } else {
              model.backward(dOut, ctx, overwrite, null);
              mark(timeline, "backward");
            }
            device.sumInto(losses, lossSum);
            if (loss == Loss.CROSS_ENTROPY) {
              device.countCorrect(out, y, correct);
            }
          }
          micro++;
          if (closes) {
            if (groupSize < accum) {
              device.scale(grads, (float) accum / groupSize);
            }
            if (!useBuckets && comm.worldSize() > 1) {
              long c0 = System.nanoTime();
              comm.allReduceSum(grads);
              device.synchronize();
              commNanos += System.nanoTime() - c0;
              mark(timeline, "all-reduce");
            }
            if (useBuckets && needsGradientsOnHost()) {
              commNanos += awaitBuckets(); // the check below reads the gradients: wait under the watchdog
            }
            if (shards != null && useBuckets) {
              // Note [sharded optimizer]: every bucket updated and gathered above; the next forward waits for them
              optimizer.endStep();
              gatherShardsDone();
              if (checkEveryStep) {
                commNanos += checkFiniteSharded(epoch);
              }
            } else if (checkFinite(epoch)) {
              optimizer.step(schedule.lr(config.optimizer().lr(), optimizerStep));
            } else {
              skipped++;
              optimizer.setSteps(optimizer.steps() + 1);
            }
            mark(timeline, "optimizer");
            optimizerStep++;
            micro = 0;
            boolean ckpt = checkpoints != null && (last || (checkpoints.interval() > 0
                && optimizerStep % checkpoints.interval() == 0));
            if (listening || ckpt) {
              commNanos += awaitBuckets(); // both read device memory: no plain wait on a collective
            }
            if (ckpt) {
              commNanos += consolidateShards(); // every rank's weights and optimizer state, whole (every rank checkpoints)
            }
            stepListener.accept(optimizerStep);
            if (ckpt) {
              writeCheckpoint(last ? epoch + 1 : epoch);
            }
          }
        }
        long waitNanos = loader.waitNanos() - wait0;
        commNanos += awaitBuckets();
        if (epochListening) {
          commNanos += consolidateShards(); // the listener may read the weights (Note [sharded optimizer])
        }
        device.synchronize();
        double seconds = (System.nanoTime() - t0) / 1e9;
        long samples = (long) (stepsPerEpoch - skip) * b;
        if (timeline != null) {
          Map<String, Double> perStep = new LinkedHashMap<>();
          int n = stepsPerEpoch - skip;
          timeline.drain().forEach((phase, ms) -> perStep.put(phase, ms / n));
          timelines.add(perStep);
        }
        float[] host = new float[1];
        device.download(lossSum, host, 0);
        double meanLoss = host[0] / samples;
        device.download(correct, host, 0);
        double acc = loss == Loss.CROSS_ENTROPY ? host[0] / samples : Double.NaN;
        EpochStats es = new EpochStats(epoch, comm.rank(), samples, meanLoss, acc, seconds, waitNanos / 1e9,
            seconds - waitNanos / 1e9 - commNanos / 1e9, commNanos / 1e9, skipped);
        stats.add(es);
        epochListener.accept(es);
      }
      consolidateShards(); // the caller reads the weights and optimizer state (Note [sharded optimizer])
      releaseCopyEngine(); // every rank gets here: the windows go
    } finally {
      // A fit that failed keeps its receive buffer and windows (releaseCopyEngine did not run): a deregistration is a
      // collective the other ranks may never make, and freeing registered memory would leave NCCL a window on it.
      // The next fit uses them again; the communicator's abort or close gives the windows back, the device's close
      // the memory.
      copyEngineNow = false;
      closeGraphs(graphs);
      if (timeline != null) {
        model.markLayers(null);
        timeline.close();
      }
    }
    return stats;
  }

  /**
   * One step's device work under Note [CUDA graphs]: eager during the warm-up and once graphs are off, else a
   * replay of the slot's graph, captured (and so run) the first time the slot comes up.
   */
  private void graphStep(StepGraph[] graphs, int slot, int stepsDone, Runnable work) {
    if (graphsOff != null || stepsDone < GRAPH_WARMUP_STEPS) {
      work.run();
      return;
    }
    if (graphs[slot] != null) {
      if (graphs[slot].replay()) {
        graphReplays++;
        return;
      }
      graphsOff(graphs, device.name() + " can no longer replay the captured step (it logged why)",
          System.Logger.Level.WARNING);
      work.run();
      return;
    }
    StepGraph g;
    try {
      g = device.captureGraph(work);
    } catch (GraphCaptureException e) {
      model.discardStep(); // the capture may have stopped inside backward, holding transient gradients
      graphsOff(graphs, e.getMessage(), System.Logger.Level.WARNING);
      work.run(); // none of it ran on the device
      return;
    }
    if (g == null) {
      graphsOff(graphs, device.name() + " has no graphs", System.Logger.Level.INFO); // the work ran eagerly
      return;
    }
    graphs[slot] = g;
    graphCaptures++;
  }

  /** Turns CUDA graphs off for the rest of the run: closes this fit's graphs, logs why once. */
  private void graphsOff(StepGraph[] graphs, String why, System.Logger.Level level) {
    if (graphs != null) {
      closeGraphs(graphs);
    }
    graphsOff = why;
    LOG.log(level, "rank {0}: CUDA graphs off, steps run eagerly (after {1} from graphs): {2}", comm.rank(),
        graphSteps(), why);
  }

  private static void closeGraphs(StepGraph[] graphs) {
    for (int k = 0; k < graphs.length; k++) {
      if (graphs[k] != null) {
        graphs[k].close();
        graphs[k] = null;
      }
    }
  }

  /** Why this run's steps cannot be captured as CUDA graphs (Note [CUDA graphs]), or null when they can. */
  String graphIneligibility(boolean overlappedBuckets, int accum) {
    if (overlappedBuckets) {
      return "the gradients are all-reduced in buckets overlapping backward (" + comm.worldSize() + " ranks, "
          + comm.getClass().getSimpleName() + "; AllReduceMode " + allReduceMode + ")";
    }
    if (accum != 1) {
      return "gradient accumulation over " + accum + " micro-batches";
    }
    return stepDependentLayer(model.spec().layers());
  }

  /** A layer (inside residual blocks too) whose step work changes per step or talks to other ranks, or null. */
  static String stepDependentLayer(List<ModelSpec.LayerSpec> layers) {
    for (ModelSpec.LayerSpec l : layers) {
      if (l.type().equals("dropout") && l.p() > 0f) {
        return "the model has dropout (its mask's seed changes every step)";
      }
      if (l.type().equals("batchnorm2d") && l.norm() != null && l.norm().sync()) {
        return "the model has synchronised batch norm (collectives inside forward and backward)";
      }
      String inner = stepDependentLayer(l.layers());
      if (inner == null) {
        inner = stepDependentLayer(l.shortcut());
      }
      if (inner != null) {
        return inner;
      }
    }
    return null;
  }

  /** A mark on the step timeline, when there is one (Note [step timeline] in engine.StepTimeline). */
  private static void mark(StepTimeline timeline, String phase) {
    if (timeline != null) {
      timeline.mark(phase);
    }
  }

  /**
   * Measures where each step's device time goes (Note [step timeline] in engine.StepTimeline): marks around the
   * input wait, forward, backward, the wait for the gradient all-reduce and the optimizer; {@link #timelines()}
   * then holds milliseconds per step and phase for each epoch. Default: -Dsparktrainer.train.timeline (false).
   */
  public Trainer stepTimeline(boolean on) {
    this.stepTimeline = on;
    return this;
  }

  /**
   * With {@link #stepTimeline} on, splits forward and backward by the model's top-level layers (phases "forward
   * NAME" and "backward NAME", Model.markLayers; "forward + loss" is then the loss alone): a diagnostic, an event
   * per layer and direction. Not for CUDA-graph steps (their phase stays whole).
   * Default: -Dsparktrainer.train.timelineLayers (false).
   */
  public Trainer stepTimelineByLayer(boolean on) {
    this.timelineByLayer = on;
    return this;
  }

  /**
   * Per epoch of the fits so far with {@link #stepTimeline} on: device milliseconds per step by phase, in step
   * order ("between steps": from the end of one step's work to the start of the next, the device waiting for
   * the host). Empty when off.
   */
  public List<Map<String, Double>> timelines() {
    return List.copyOf(timelines);
  }

  // Note [bucket wait lag]: at its deferred wait (Note [deferred bucket wait]) the host waits for the buckets of
  // the step bucketWaitLag steps back: 1, the default, the step before, which holds the host at most about one
  // step ahead of the device; 2, the step before that (Communicator#awaitAsyncBefore(1)), so the host may run about
  // two steps ahead, as it can at W = 1 (two input slots). The device's order is the same either way (joinAsync
  // orders every step after the previous step's buckets), so are the results (AllReduceModeTest); a dead peer is
  // found a step later. The waits before the host reads the gradients or the weights (clipping, the non-finite
  // check, listeners, checkpoints) and at the end of an epoch still wait for every bucket, so the lag only shows
  // with checkNonFinite(false) and no clipping (the GPU benchmark's settings). Why: at W = 2 the
  // Fashion-MNIST CNN's replayed step (~0.55 ms on an H100) left the host little room (benchmarks/README.md).
  // Measured on 2 H100s (small-cnn W=2, ours only): 1.54M vs 1.40M samples/s with the loader 2 batches ahead, but
  // 1.73M vs 1.66-1.72M once it ran 8 ahead (Note [loader depth] in BatchLoader) and 1.72M vs 1.76-1.79M with one
  // in-order all-reduce: no steady gain, so 1 stays the default (-Dsparktrainer.train.bucketWaitLag=2).

  /** -Dsparktrainer.train.bucketWaitLag: the default of {@link #bucketWaitLag(int)} (1). */
  public static final String BUCKET_WAIT_LAG_PROPERTY = "sparktrainer.train.bucketWaitLag";

  /**
   * How many steps back the host's per-step wait for the gradient buckets reaches (Note [bucket wait lag]): 1 (the
   * default: the step before) or 2. Only for communicators with async collectives (NCCL, W > 1).
   */
  public Trainer bucketWaitLag(int steps) {
    this.bucketWaitLag = checkLag(steps);
    return this;
  }

  private static int checkLag(int steps) {
    if (steps < 1 || steps > 2) {
      throw new IllegalArgumentException("bucketWaitLag (-D" + BUCKET_WAIT_LAG_PROPERTY + ") must be 1 or 2 steps, got "
          + steps);
    }
    return steps;
  }

  /** -Dsparktrainer.train.gemmSmCarveout: the default of {@link #gemmSmCarveout(int)} (-1, automatic). */
  public static final String GEMM_SM_CARVEOUT_PROPERTY = "sparktrainer.train.gemmSmCarveout";

  /** {@link #gemmSmCarveout(int)}'s automatic choice. */
  public static final int GEMM_SM_CARVEOUT_AUTO = -1;

  /**
   * SMs that the matrix multiplies of a backward leave free for its overlapping gradient all-reduce (Note [GEMM SM
   * carve-out] in cuda.CudaDevice): only while buckets overlap backward (NCCL, W > 1, {@link AllReduceMode}), only
   * on the GPU. {@link #GEMM_SM_CARVEOUT_AUTO} (the default): the device's choice ({@link
   * Device#autoGemmSmCarveout()}: a quarter of a GPU's SMs; three quarters of that with bf16 gradients, whose
   * all-reduce moves half the bytes) when all ranks share a host, whose NCCL copies over NVLink with its own kernels,
   * else 0; 0 leaves none. The results are those of the same matmuls on fewer SMs
   * (cuBLASLt may choose another algorithm for them, within fp32 accumulation). It must be below the GPU's SM count
   * (checked when the fit starts, before any step).
   */
  public Trainer gemmSmCarveout(int sms) {
    this.gemmSmCarveout = checkCarveout(sms);
    return this;
  }

  private static int checkCarveout(int sms) {
    if (sms < GEMM_SM_CARVEOUT_AUTO) {
      throw new IllegalArgumentException("gemmSmCarveout (-D" + GEMM_SM_CARVEOUT_PROPERTY + ") must be >= 0 SMs, or "
          + GEMM_SM_CARVEOUT_AUTO + " for the automatic choice, got " + sms);
    }
    return sms;
  }

  /** The carve-out of this fit's overlapped backwards; 0 when buckets do not overlap backward. */
  int resolvedGemmSmCarveout(boolean bucketed) {
    if (!bucketed || !overlapBuckets) {
      return 0;
    }
    if (gemmSmCarveout != GEMM_SM_CARVEOUT_AUTO) {
      return gemmSmCarveout;
    }
    if (!comm.allRanksOnOneHost()) {
      return 0;
    }
    if (copyEngineNow) {
      return COPY_ENGINE_CARVEOUT; // Note [copy-engine collectives]: the bytes move without SMs
    }
    // bf16 gradients (Note [bf16 gradients] in nn.Model) halve the all-reduce, and it needs fewer SMs beside backward:
    // three quarters of the device's choice (24 SMs on an H100). The benchmark MLP at W = 2 with bf16 gradients, two
    // samples each on 2 H100s (ours only, one call): 746-748k samples/s with 33 SMs, 769-775k with 24.
    int auto = device.autoGemmSmCarveout();
    return model.gradientDType() == DType.BFLOAT16 ? auto * 3 / 4 : auto;
  }

  /** The per-step bucket wait of Note [bucket wait lag]; returns the nanoseconds. */
  private long awaitBucketsLagged() {
    long c0 = System.nanoTime();
    comm.awaitAsyncBefore(bucketWaitLag - 1);
    return System.nanoTime() - c0;
  }

  /** Waits (under the communicator's watchdog) for the async buckets started so far; returns the nanoseconds. */
  private long awaitBuckets() {
    long c0 = System.nanoTime();
    comm.awaitAsync();
    return System.nanoTime() - c0;
  }

  /** Whether the optimizer step reads the gradients on the host (clipping or the non-finite check). */
  private boolean needsGradientsOnHost() {
    return config.clipNorm() > 0 || checkEveryStep || config.nonFinite() != TrainerConfig.NonFinitePolicy.FAIL;
  }

  /** Queues the copy of a host batch into the device slot (device.prefetch: ordered, maybe asynchronous). */
  private void stage(HostBatch batch, Tensor x, Tensor y) {
    if (batch.featuresBf16 != null && x.dtype() == DType.BFLOAT16) {
      device.prefetchBf16(batch.featuresBf16, 0, x); // rounded by the loader (Note [bf16 input on the loader threads])
    } else {
      device.prefetch(batch.features, 0, x);
    }
    if (batch.labels != null) {
      device.prefetch(batch.labels, 0, y);
    } else {
      device.prefetch(batch.targets, 0, y);
    }
  }

  /**
   * Bucket boundaries over the flat buffer of {@code total} elements, from the end down: starts[0] = total,
   * starts[i + 1] = start of bucket i (bucket i = [starts[i + 1], starts[i])). The first bucket holds
   * firstBucketBytes, the others bucketBytes (fp32), except that the last one (the first parameters) holds at
   * most firstBucketBytes as well: its gradients are final only when backward ends, so nothing overlaps its
   * all-reduce (ResNet-50: the remainder was 21.5 MiB, now 1 MiB after a 20.5 MiB bucket that overlaps the
   * backward of layer1 and the stem). Boundaries are aligned to ParameterSet.ALIGN elements.
   */
  long[] bucketStarts(long total) {
    return bucketStarts(total, 4);
  }

  /** {@link #bucketStarts(long)} for gradients of {@code elementBytes} each (bf16: 2; the sizes are in bytes). */
  long[] bucketStarts(long total, int elementBytes) {
    return bucketStarts(total, elementBytes, new long[0]);
  }

  /**
   * {@link #bucketStarts(long, int)}, where buckets also end at {@code layerStarts} (ascending: the offsets at which
   * backward reports gradients final, Model#gradientReadyOffsets), as PyTorch DDP's buckets hold whole parameters: a
   * bucket goes when its layer's backward is done instead of waiting for the layer below. A layer larger than a bucket
   * is cut into buckets from its top, and a remainder under an eighth of a bucket joins the bucket above (so one
   * bucket may hold 9/8 of the size); small layers share a bucket, up to the size. The first and last buckets keep
   * their small size. On the benchmark MLP (sharded: Note [sharded optimizer]) the bucket that held the first layer
   * and 5.2M of the second layer's 67M parameters waited for the first layer, the last in backward; now only the
   * first layer (8.4M) is left after backward.
   */
  long[] bucketStarts(long total, int elementBytes, long[] layerStarts) {
    return bucketStarts(total, elementBytes, layerStarts, bucketBytes > 0 ? bucketBytes : DEFAULT_BUCKET_BYTES);
  }

  /** {@link #bucketStarts(long, int, long[])} with buckets of {@code bucketBytes} (the first keeps its own size). */
  long[] bucketStarts(long total, int elementBytes, long[] layerStarts, long bucketBytes) {
    List<Long> s = new ArrayList<>();
    s.add(total);
    long hi = total;
    boolean first = true;
    long tail = alignedBucket(firstBucketBytes, elementBytes);
    long size = alignedBucket(bucketBytes, elementBytes);
    long minPiece = size / 8;
    java.util.Set<Long> starts = new java.util.HashSet<>();
    for (long o : layerStarts) {
      starts.add(o);
    }
    while (hi > 0) {
      long lo = Math.max(0, hi - (first ? alignedBucket(firstBucketBytes, elementBytes) : size));
      long o = -1; // the highest layer start inside the bucket
      for (long x : layerStarts) {
        if (x > lo && x < hi) {
          o = Math.max(o, x);
        }
      }
      if (!first && o >= 0) {
        if (hi - o < minPiece && s.size() > 2 && !starts.contains(hi)) {
          s.set(s.size() - 1, o); // a layer's small remainder joins the bucket above, of the same layer
          hi = o;
          continue;
        }
        if (hi - o >= minPiece) {
          lo = o; // the rest of the layer above
        } else { // hi starts a small layer: whole small layers together, up to a bucket
          lo = o;
          for (long x : layerStarts) {
            if (x >= hi - size && x < lo) {
              lo = x;
            }
          }
        }
      }
      if (lo < tail && hi > tail) {
        lo = tail; // leave a small last bucket
      }
      s.add(lo);
      hi = lo;
      first = false;
    }
    long[] out = new long[s.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = s.get(i);
    }
    return out;
  }

  /** A bucket's size in elements of {@code elementBytes}, a multiple of ParameterSet.ALIGN (at least one). */
  private static long alignedBucket(long bytes, int elementBytes) {
    return Math.max(ParameterSet.ALIGN, bytes / elementBytes / ParameterSet.ALIGN * ParameterSet.ALIGN);
  }

  // Note [sharded optimizer]: as PyTorch's ZeroRedundancyOptimizer and ZeRO stage 1, each of the W ranks updates
  // only its slice of the weights, and the others' slices come to it by all-gather. Per step, instead of an
  // all-reduce per gradient bucket and the whole optimizer on every rank:
  // - each bucket is reduce-scattered, overlapping backward as the all-reduce did. Rank r's slice r of the bucket
  //   then holds the summed gradients (ShardPlan; buckets that do not split into W aligned slices stay all-reduced,
  //   and every rank updates them whole);
  // - the optimizer runs on this rank's slices only: 1/W of its memory pass, which on the benchmark MLP is the step's
  //   largest part after the matmuls (1.5 ms of 9.3 on an H100);
  // - the weights that forward reads are all-gathered (shardGather): the bf16 mirror where the model reads its
  //   weights only from it and the device keeps it (half the bytes of fp32), else the fp32 weights themselves;
  // - both happen during backward (updateShards): when backward signals the next layer's gradients final, the
  //   buckets started at the signal before are updated on the compute stream (which first waits for their
  //   collectives, by then done) and their slices all-gathered on the comm stream, as one NCCL group, before the new
  //   layer's reduce-scatters. One signal later, not at once: a layer signals between its dW and its dx, and dx still
  //   reads the weights being updated. The other order (the new reduce-scatters first, which then ran beside the
  //   update) measured slower: 748-750k samples/s against 798k (benchmark MLP, W = 2, 2 H100s, one call), because
  //   NCCL's kernels took SMs from the update. On the copy engines (below) it is the other way round: the new
  //   layer's all-to-alls go first and overlap the update, where before the communication stream idled through it;
  //   fp32 gradients 799k samples/s against 786k, bf16 876k against 869k (ours only, one call each way,
  //   results/2026-11-26-h100x2-ce-buckets). What backward's end leaves (the first layers' buckets) follows it; the
  //   next forward waits for the gathers.
  // The sums are those of the all-reduce (at W = 2, one addition per element either way), and each slice's update is
  // the same arithmetic on the same elements, so the weights are the same bits as without sharding
  // (CudaShardedOptimizerTest, ShardedOptimizerTest).
  // What is stale: the other ranks' slices of this rank's fp32 weights (where the mirror is gathered) and optimizer
  // state. consolidateShards gathers them whole at each epoch's end when an epoch listener is set, before each
  // checkpoint (a collective, so every rank must be given the same checkpointing policy, as the Spark path does), and
  // at the end of the fit; after a fit that threw, only the weights forward reads are whole.
  // Where: opt-in (shardOptimizer, -Dsparktrainer.train.shardOptimizer=true), and only where shardingIneligibility
  // finds nothing: NCCL buckets overlapping backward at W > 1, no accumulation, no bf16 all-reduce hook, nothing that
  // needs the whole gradients before the update (clipping, nonFinite=skip), no step listener that reads device memory
  // (onStep; onStepProgress is fine), no buffers. The per-step non-finite check (nonFinite=fail) runs after the update
  // (checkFiniteSharded), so it can only fail the fit. A step makes several joins, so bucketWaitLag 2 acts as 1.
  // Measured: the benchmark MLP with bf16 gradients at W = 2 on 2 H100s, 798k samples/s against 766-768k unsharded in
  // the same call (+4%; ours only, without the per-step non-finite check, which makes the host wait for every step;
  // benchmarks/README.md). What was left: backward ran 7.1 ms against 5.25 at W = 1 plus the 0.77 ms update inside
  // it, because the GEMMs left 24 SMs to NCCL (Note [GEMM SM carve-out]); the last layers' gathers and
  // reduce-scatters waited 0.7 ms after it. Two additions took that on:
  // - copyEngineCollectives (Note [copy-engine collectives] in cuda.NcclCommunicator): each bucket goes by all-to-all
  //   into shardRecv instead of the in-place reduce-scatter, and the update reads this rank's W chunks and sums them
  //   in its own pass (Optimizer.update over engine.GradientSlices; Note [summed gradient slices] in optim.cuh): the
  //   other ranks' from shardRecv, its own from the gradient buffer, where backward wrote it, which the exchange
  //   therefore need not copy (two in-place gathers at W = 2). The gradient buffer holds only this rank's own
  //   gradients then; the all-to-alls and all-gathers run on the copy engines
  //   and the GEMMs leave 4 SMs (COPY_ENGINE_CARVEOUT). At W = 2 the sum is NCCL's one addition: the same bits.
  //   Only the gradients on this rank are checked by checkFiniteSharded then, so a sum that overflows finite bf16
  //   gradients goes unseen until the weights show it;
  // - buckets end at layer starts (bucketStarts with Model#gradientReadyOffsets; layerAlignedBuckets), so only the
  //   first layer's gradients are left when backward ends.
  // The benchmark MLP with bf16 gradients: W = 2 scales 98.1% (872-875k samples/s against 444-446k at W = 1; PyTorch
  // DDP 79%), against 88-90% with NCCL's kernels (results/2026-11-26-h100x2-ce-run{1,2}). With fp32 gradients the
  // all-to-alls move twice the bytes; the all-to-alls queued before the update and 50 MiB buckets
  // (COPY_ENGINE_BUCKET_BYTES) took it from 89-90% to 94.4% / 95.1% (PyTorch DDP 82-83%;
  // results/2026-11-26-h100x2-cebuckets-run{1,2}), and the exchange without the own chunk to 98.5-99.2% in four runs
  // (bf16 gradients 99.5-102.5%; results/2026-11-26-h100x2-gathers-run{1,2}, -full-run{1,2}).

  /** -Dsparktrainer.train.shardOptimizer=true: the default of {@link #shardOptimizer(boolean)} (false). */
  public static final String SHARD_OPTIMIZER_PROPERTY = "sparktrainer.train.shardOptimizer";

  /**
   * Shards the optimizer over the ranks (Note [sharded optimizer]): each updates its slice of the weights and the
   * slices are all-gathered. Where a fit cannot (see {@link #shardingOffReason()}), it trains unsharded and each
   * rank logs why. Default: -Dsparktrainer.train.shardOptimizer (false).
   */
  public Trainer shardOptimizer(boolean on) {
    this.shardOptimizer = on;
    return this;
  }

  /** -Dsparktrainer.train.layerAlignedBuckets=true|false: the default of {@link #layerAlignedBuckets(boolean)}. */
  public static final String LAYER_BUCKETS_PROPERTY = "sparktrainer.train.layerAlignedBuckets";

  /**
   * Whether overlapped gradient buckets end at layer starts ({@link #bucketStarts(long, int, long[])}), so that a
   * bucket goes when its layer's backward is done. Default: only when the optimizer is sharded (Note [sharded
   * optimizer]); the other runs keep buckets of fixed size (the figures in benchmarks/ were measured so). Default:
   * -Dsparktrainer.train.layerAlignedBuckets when set.
   */
  public Trainer layerAlignedBuckets(boolean on) {
    this.layerBuckets = on;
    return this;
  }

  /** -Dsparktrainer.train.copyEngineCollectives=true: the default of {@link #copyEngineCollectives(boolean)}. */
  public static final String COPY_ENGINE_PROPERTY = "sparktrainer.train.copyEngineCollectives";

  /** The automatic GEMM carve-out beside copy-engine collectives (NCCL's small kernel per collective needs SMs). */
  static final int COPY_ENGINE_CARVEOUT = 4;

  /**
   * Runs the sharded optimizer's collectives on the GPUs' copy engines where the communicator can (Note [copy-engine
   * collectives] in cuda.NcclCommunicator: NCCL 2.28+, ranks on one host, the model built on a CudaDevice that
   * prefers registrable memory); otherwise the fit keeps NCCL's kernels and each rank logs why
   * ({@link #copyEngineOffReason()}). Only with {@link #shardOptimizer}. Default:
   * -Dsparktrainer.train.copyEngineCollectives (false).
   */
  public Trainer copyEngineCollectives(boolean on) {
    this.copyEngine = on;
    return this;
  }

  /** Why the last fit's sharded collectives did not run on the copy engines although asked, or null. */
  public String copyEngineOffReason() {
    return copyEngineOff;
  }

  /** The size of the last fit's gradient buckets after the first, in bytes (tests). */
  long bucketBytesUsed() {
    return bucketBytesUsed;
  }

  /** Whether the last fit's sharded collectives ran on the copy engines (Note [copy-engine collectives]). */
  public boolean copyEngineCollectivesUsed() {
    return copyEngineOff == null && copyEngine && shards != null;
  }

  /** Whether {@link #copyEngineCollectives} asked for them (the default included). */
  public boolean copyEngineCollectivesAsked() {
    return copyEngine;
  }

  /** Why the last fit's optimizer was not sharded although {@link #shardOptimizer} asked, or null. */
  public String shardingOffReason() {
    return shardingOff;
  }

  /** Whether the last fit sharded its optimizer (Note [sharded optimizer]). */
  public boolean shardedOptimizer() {
    return shards != null;
  }

  /** Why this fit's optimizer cannot be sharded (Note [sharded optimizer]), or null when it can. */
  String shardingIneligibility(boolean overlappedBuckets, int accum) {
    if (comm.worldSize() < 2) {
      return "one rank";
    }
    if (!overlappedBuckets) {
      return "its gradients are not in buckets overlapping backward (" + comm.getClass().getSimpleName()
          + ", AllReduceMode " + allReduceMode + "): sharding needs NCCL's asynchronous collectives";
    }
    if (accum != 1) {
      return "gradient accumulation over " + accum + " micro-batches";
    }
    if (bf16AllReduce) {
      return "the bf16 all-reduce hook is on (bf16 gradients halve the bytes the same way and shard)";
    }
    if (config.clipNorm() > 0 || config.nonFinite() != TrainerConfig.NonFinitePolicy.FAIL) {
      return "the optimizer step needs the whole gradients first (clipNorm, or nonFinite=skip)";
    }
    if (listening) {
      return "a step listener may read the weights after every step (each read would gather them whole)";
    }
    ParameterSet ps = model.parameters();
    if (ps.trainableElements() != ps.totalElements()) {
      return "the model has buffers (batch norm statistics) beside its weights";
    }
    if (model.parameterMirror() != null && !model.readsParametersOnlyFromMirror()) {
      return "some layers read the fp32 weights beside the bf16 mirror";
    }
    return null;
  }

  /**
   * Note [sharded optimizer]: queues the update of the buckets in {@code pending} on this rank's slices (their
   * gradients summed: the caller has made the compute stream wait for their collectives), then the all-gather of
   * their sharded slices of the weights forward reads (the bf16 mirror, or the fp32 weights), as one NCCL group;
   * clears pending.
   */
  private void updateShards(List<Integer> pending, double lr) {
    if (pending.isEmpty()) {
      return;
    }
    long[][] ranges = new long[pending.size()][];
    GradientSlices[] slices = copyEngineNow ? new GradientSlices[pending.size()] : null;
    List<Tensor> gather = new ArrayList<>();
    Tensor grads = model.parameters().trainableGrads();
    for (int k = 0; k < pending.size(); k++) {
      int i = pending.get(k);
      ranges[k] = shards.owned(i);
      if (shards.sharded(i)) {
        gather.add(shards.view(shardGather, i));
        if (slices != null) { // the all-to-all brought the other ranks' copies of this rank's slice: the update sums
          long[] r = ranges[k]; // them with this rank's own, still in the gradient buffer
          slices[k] = new GradientSlices(shards.view(shardRecv, i), comm.worldSize(), comm.rank(),
              grads.view(r[0], Math.toIntExact(r[1] - r[0])));
        }
      }
    }
    optimizer.update(lr, ranges, slices);
    comm.allGatherAsync(gather);
    pending.clear();
  }

  /**
   * What the ranks gather: the bf16 mirror where the model reads only it and the device keeps it (its optimizer writes
   * the mirror of the slices it updates, and forward does not copy the stale fp32 slices over it), else the fp32
   * weights.
   */
  private Tensor gatherTarget() {
    Tensor mirror = model.readsParametersOnlyFromMirror() && device.tracksMirror() ? model.parameterMirror() : null;
    return mirror != null ? mirror : model.parameters().params();
  }

  /** Deregisters the copy-engine buffers (a collective) and frees the receive buffer, after a fit that ended well. */
  private void releaseCopyEngine() {
    if (shardRecv == null || !copyEngineNow) {
      return; // a refused registration (the ranks disagreed) leaves what an earlier fit left, as it found it
    }
    comm.releaseCopyEngineBuffers(); // every rank: the registration held on all of them
    device.free(shardRecv);
    shardRecv = null;
  }

  /** After a step's last {@link #updateShards}: later device work waits for its all-gathers; the mirror is current. */
  private void gatherShardsDone() {
    shardsStale = true;
    comm.joinAsync();
    if (shardGather != model.parameters().params()) {
      device.markMirrorCurrent(model.parameters().params(), shardGather); // its own slices written by the optimizer
    }
  }

  /**
   * Note [sharded optimizer]: gathers the fp32 weights (where the mirror was gathered instead) and the optimizer
   * state of every sharded bucket, so every rank holds them whole; waits for them under the watchdog. Returns the
   * nanoseconds (0 when the fit is not sharded).
   */
  private long consolidateShards() {
    if (shards == null || !shardsStale) {
      return 0;
    }
    shardsStale = false;
    long c0 = System.nanoTime();
    List<Tensor> whole = new ArrayList<>(optimizer.state().values());
    if (shardGather != model.parameters().params()) {
      whole.add(model.parameters().params()); // the mirror was gathered instead
    }
    List<Tensor> gather = new ArrayList<>();
    for (Tensor t : whole) {
      for (int i = shards.buckets() - 1; i >= 0; i--) {
        if (shards.sharded(i)) {
          gather.add(shards.view(t, i));
        }
      }
    }
    comm.allGatherAsync(gather);
    comm.awaitAsync();
    return System.nanoTime() - c0;
  }

  /**
   * The per-step non-finite check under Note [sharded optimizer] (nonFinite=fail): the update is already applied, so
   * it can only fail the fit, as the unsharded check does before it. Each rank's gradient buffer holds its own
   * gradients outside its slices and the sums in them (with copy-engine collectives: only its own), so a NaN or
   * infinity in any rank's gradients shows on that rank at least; one all-reduced flag makes every rank decide the
   * same. Returns the nanoseconds.
   */
  private long checkFiniteSharded(int epoch) {
    long c0 = System.nanoTime();
    boolean finite = Double.isFinite(device.sumSquares(model.parameters().grads()));
    if (nonFiniteFlag == null) {
      nonFiniteFlag = device.allocate(DType.FLOAT32, 1);
    }
    device.upload(new float[] {finite ? 0f : 1f}, 0, nonFiniteFlag);
    comm.allReduceSum(nonFiniteFlag);
    float[] flag = new float[1];
    device.download(nonFiniteFlag, flag, 0);
    if (flag[0] != 0f) {
      throw new NonFiniteException("rank " + comm.rank() + ": gradients are NaN or infinite at optimizer step "
          + optimizerStep + " (epoch " + (epoch + 1) + ", on " + (finite ? "another rank" : "this rank")
          + "; the sharded optimizer had applied the step); lower the learning rate, clip gradients (clipNorm, which"
          + " trains unsharded), check the input for extreme values, or set nonFinite=skip to skip such steps");
    }
    return System.nanoTime() - c0;
  }

  /** Orders later device work after this step's buckets; widens the bf16 sums (after them) into the gradients. */
  private void joinBuckets(Tensor grads) {
    comm.joinAsync();
    if (gradsLow != null) {
      device.copy(gradsLow, grads);
    }
  }

  private void launchBucket(Tensor grads, long[] starts, int i) {
    long lo = starts[i + 1];
    long hi = starts[i];
    if (shards != null && shards.sharded(i)) { // never with the bf16 hook (shardingIneligibility)
      if (copyEngineNow) {
        comm.allToAllAsync(shards.view(grads, i), shards.view(shardRecv, i)); // summed by updateShards
      } else {
        comm.reduceScatterSumAsync(shards.view(grads, i)); // Note [sharded optimizer]
      }
      return;
    }
    if (gradsLow != null) {
      Tensor low = gradsLow.view(lo, Math.toIntExact(hi - lo));
      device.copy(grads.view(lo, Math.toIntExact(hi - lo)), low); // rounded on the compute stream, in order
      startAllReduce(low);
      return;
    }
    startAllReduce(grads.view(lo, Math.toIntExact(hi - lo)));
  }

  private void startAllReduce(Tensor bucket) {
    if (overlapBuckets) {
      comm.allReduceSumAsync(bucket);
    } else {
      comm.allReduceSumInOrder(bucket); // Note [in-order gradient all-reduce]
    }
  }

  /** The size of gradient buckets after the first, unless set by {@link #gradientBuckets}: 25 MiB, as PyTorch DDP. */
  public static final long DEFAULT_BUCKET_BYTES = 25L << 20;

  /**
   * The bucket size under Note [copy-engine collectives], unless set by {@link #gradientBuckets}: 50 MiB. Each of
   * those collectives makes two handshakes between the GPUs, and its all-to-all then also copied this rank's own
   * chunk, which with a CUDA driver before 13.1 runs on the SMs that the GEMMs leave free (4): in a CUPTI trace of
   * the benchmark MLP with fp32 gradients on 2 H100s, those 12.5 MiB copies took ~110 us beside a GEMM and ~10 us
   * without one, and the compute stream waited ~1.1 ms per step. Half as many collectives per layer: W = 2 scaled
   * 95.2-96.1% against 91.3% with 25 MiB buckets set (same call), and 94.4% / 95.1% in the suite with PyTorch in the
   * same call (its DDP: 82-83%); bf16 gradients 98.9-99.2% against 99.7%. 100 MiB measured the same within noise
   * (95.6-95.8% against 95.2-95.3%). Ours only except the suite; benchmarks/results/2026-11-26-h100x2-ce-buckets.
   * (Since then the exchange skips the own chunk at W = 2, as two gathers, so four handshakes per bucket;
   * cuda.NcclCommunicator#GATHER_EXCHANGE_MAX_RANKS. The bucket size was not measured again.)
   */
  public static final long COPY_ENGINE_BUCKET_BYTES = 50L << 20;

  /**
   * Gradient bucket sizes for NCCL (Note [gradient buckets]): the first bucket (the last parameters, ready
   * first) and the others, in bytes of gradients (fp32, or bf16 under Note [bf16 gradients] in nn.Model: twice the
   * elements). Defaults 1 MiB and {@link #DEFAULT_BUCKET_BYTES}, as PyTorch DDP ({@link #COPY_ENGINE_BUCKET_BYTES}
   * when the sharded optimizer's collectives run on the copy engines).
   */
  public Trainer gradientBuckets(long firstBytes, long bytes) {
    if (firstBytes <= 0 || bytes <= 0) {
      throw new IllegalArgumentException("bucket sizes must be > 0, got " + firstBytes + " and " + bytes);
    }
    this.firstBucketBytes = firstBytes;
    this.bucketBytes = bytes;
    return this;
  }

  private void writeCheckpoint(int epoch) {
    if (comm.rank() != 0) {
      return;
    }
    ObjectNode extra = JsonNodeFactory.instance.objectNode();
    extra.put("seed", config.seed());
    extra.put("worldSize", comm.worldSize());
    extra.put("batchSize", config.batchSize());
    CheckpointData data = Checkpoints.capture(model, optimizer, optimizerStep, epoch, extra);
    try {
      CheckpointIO.write(data, CheckpointIO.pathFor(checkpoints.dir(), optimizerStep), hadoopConf);
      CheckpointIO.keepLast(checkpoints.dir(), checkpoints.keep(), hadoopConf);
    } catch (IOException e) {
      throw new UncheckedIOException("rank 0 could not write a checkpoint at step " + optimizerStep + " to "
          + checkpoints.dir(), e);
    }
  }

  /**
   * Checks the all-reduced gradients (identical on every rank, so every rank decides the same) and clips
   * them by global norm; one reduction serves both. Returns false when the step must be skipped.
   */
  private boolean checkFinite(int epoch) {
    boolean clip = config.clipNorm() > 0;
    if (!clip && !checkEveryStep && config.nonFinite() == TrainerConfig.NonFinitePolicy.FAIL) {
      return true;
    }
    double sq = device.sumSquares(model.parameters().grads());
    if (!Double.isFinite(sq)) {
      if (config.nonFinite() == TrainerConfig.NonFinitePolicy.FAIL) {
        throw new NonFiniteException("rank " + comm.rank() + ": gradients are NaN or infinite at optimizer step "
            + optimizerStep + " (epoch " + (epoch + 1) + "); lower the learning rate, clip gradients "
            + "(clipNorm), check the input for extreme values, or set nonFinite=skip to skip such steps");
      }
      return false;
    }
    double norm = Math.sqrt(sq);
    if (clip && norm > config.clipNorm()) {
      device.scale(model.parameters().grads(), (float) (config.clipNorm() / (norm + 1e-6)));
    }
    return true;
  }

  /** Epoch 0 trains in the sampler's order; later epochs reshuffle within the rank (seed, epoch, rank). */
  int[] epochOrder(int[] local, int epoch) {
    int[] order = local.clone();
    if (epoch == 0) {
      return order;
    }
    SplittableRandom rnd = new SplittableRandom(Rng.derive(Rng.derive(config.seed(), epoch), comm.rank()));
    for (int i = order.length - 1; i > 0; i--) {
      int j = rnd.nextInt(i + 1);
      int tmp = order[i];
      order[i] = order[j];
      order[j] = tmp;
    }
    return order;
  }

  /** Optimizer steps taken so far. */
  public long optimizerSteps() {
    return optimizerStep;
  }
}
