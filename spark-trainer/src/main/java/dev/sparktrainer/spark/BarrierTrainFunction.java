package dev.sparktrainer.spark;

import dev.sparktrainer.api.TrainingSummary;
import dev.sparktrainer.checkpoint.CheckpointData;
import dev.sparktrainer.checkpoint.CheckpointIO;
import dev.sparktrainer.checkpoint.CheckpointInfo;
import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.data.RowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.train.CheckpointPolicy;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.io.IOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.CRC32;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.util.SerializableConfiguration;
import scala.Tuple2;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;
import scala.runtime.AbstractFunction1;

/**
 * The body of one barrier task: data first (the partition's rows become the rank's row store, checked
 * before any collective), then the device and communicator, then the training loop. Any error aborts the
 * communicator so the other ranks fail fast instead of waiting, and is rethrown for Spark to report.
 */
final class BarrierTrainFunction extends AbstractFunction1<Iterator<Tuple2<Integer, byte[]>>, Iterator<TaskResult>>
    implements Serializable {
  private static final long serialVersionUID = 1L;
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(BarrierTrainFunction.class);
  private final String specJson;
  private final TrainerConfig cfg;
  private final String device;
  private final String token;
  private final int timeoutSeconds;
  private final int dim;
  private final int targetDim;
  private final int steps;
  private final long rowsPerRank;
  private final CheckpointPolicy checkpoints; // null: no checkpoints
  private final SerializableConfiguration hadoopConf;
  private ProgressEndpoint progress; // null: no live progress (issue 9)
  private RendezvousEndpoint rendezvous; // null: Spark's BarrierTaskContext.allGather
  private long validationRows = -1; // rows of the validation set; -1: the fit has none
  private String precision = "fp32"; // fp32, bf16 or auto (bf16 on cuda, fp32 on cpu)
  private boolean cudnnBenchmark; // cuda: timed cuDNN algorithm search (Note [cudnn benchmark per executor JVM])
  private boolean cudaGraphs; // the trainer's CUDA graphs option (Note [CUDA graphs] in Trainer)
  private boolean shardOptimizer; // the trainer's option (Note [sharded optimizer] in Trainer)
  private boolean copyEngine; // Note [copy-engine collectives] in cuda.NcclCommunicator
  private String allReduceMode = "auto"; // SparkTrainer.setAllReduceMode: auto keeps the trainer's default
  private int gemmSmCarveout = -1; // SparkTrainer.setGemmSmCarveout: -1 keeps the trainer's default
  private String gradientPrecision = "fp32"; // SparkTrainer.setGradientPrecision: fp32 or bf16 (where it applies)

  BarrierTrainFunction(String specJson, TrainerConfig cfg, String device, String token, int timeoutSeconds,
      int dim, int targetDim, int steps, long rowsPerRank, CheckpointPolicy checkpoints,
      SerializableConfiguration hadoopConf) {
    this.specJson = specJson;
    this.cfg = cfg;
    this.device = device;
    this.token = token;
    this.timeoutSeconds = timeoutSeconds;
    this.dim = dim;
    this.targetDim = targetDim;
    this.steps = steps;
    this.rowsPerRank = rowsPerRank;
    this.checkpoints = checkpoints;
    this.hadoopConf = hadoopConf;
  }

  /** Ranks report live progress to this driver endpoint (issue 9); null turns it off. */
  BarrierTrainFunction withProgress(ProgressEndpoint endpoint) {
    this.progress = endpoint;
    return this;
  }

  /** The fit has a validation set of {@code rows} rows, evaluated after every epoch (Note [validation sums]). */
  BarrierTrainFunction withValidation(long rows) {
    this.validationRows = rows;
    return this;
  }

  /**
   * The model computes in {@code precision} ("fp32", "bf16" or "auto"); {@code cudnnBenchmark} turns on the
   * timed cuDNN algorithm search on cuda (Note [cudnn benchmark per executor JVM] in CudnnBenchmark).
   */
  BarrierTrainFunction withPrecision(String precision, boolean cudnnBenchmark) {
    this.precision = precision;
    this.cudnnBenchmark = cudnnBenchmark;
    return this;
  }

  /** The trainers capture and replay their steps as CUDA graphs where that applies (Note [CUDA graphs]). */
  BarrierTrainFunction withCudaGraphs(boolean on) {
    this.cudaGraphs = on;
    return this;
  }

  /** The trainers shard their optimizer where that applies (Note [sharded optimizer] in Trainer). */
  BarrierTrainFunction withShardOptimizer(boolean on) {
    this.shardOptimizer = on;
    return this;
  }

  /** The sharded optimizer's collectives on the copy engines (Note [copy-engine collectives]). */
  BarrierTrainFunction withCopyEngineCollectives(boolean on) {
    this.copyEngine = on;
    return this;
  }

  /** SMs backward's matmuls leave to NCCL when the all-reduce overlaps it; -1: the trainer's default (auto). */
  BarrierTrainFunction withGemmSmCarveout(int sms) {
    this.gemmSmCarveout = sms;
    return this;
  }

  /**
   * The gradients are stored in {@code precision} ("fp32" or "bf16"); bf16 only where the model takes the fused
   * linear path (Note [bf16 gradients] in Model), else fp32.
   */
  BarrierTrainFunction withGradientPrecision(String precision) {
    this.gradientPrecision = precision;
    return this;
  }

  /** How the gradient all-reduce runs beside backward: "auto" (the trainer's default), "overlapped", "in_order". */
  BarrierTrainFunction withAllReduceMode(String mode) {
    this.allReduceMode = mode;
    return this;
  }

  /** The ranks meet at this driver rendezvous (Note [driver rendezvous]); null: Spark's allGather. */
  BarrierTrainFunction withRendezvous(RendezvousEndpoint endpoint) {
    this.rendezvous = endpoint;
    return this;
  }

  @Override
  public Iterator<TaskResult> apply(Iterator<Tuple2<Integer, byte[]>> it) {
    long start = System.currentTimeMillis();
    BarrierTaskContext ctx = BarrierTaskContext.get();
    try (SparkWorkerContext wc = new SparkWorkerContext(ctx, token, rendezvous, Duration.ofSeconds(timeoutSeconds))) {
      return CollectionConverters.asScala(List.of(train(ctx, wc, it, start)).iterator());
    }
  }

  private TaskResult train(BarrierTaskContext ctx, SparkWorkerContext wc, Iterator<Tuple2<Integer, byte[]>> it,
      long start) {
    int rank = wc.rank();
    int world = wc.worldSize();
    int myValidationRows = validationRows < 0 ? -1
        : Math.toIntExact(RankChunks.validationRowsOf(validationRows, world, rank));
    TaskResult result;
    // Data first: a short or empty partition fails here, before any collective.
    try (TaskRows.Loaded data = TaskRows.load(CollectionConverters.asJava(it), rank, world,
        Math.toIntExact(rowsPerRank), myValidationRows, dim, targetDim, cfg.batchSize())) {
      RowStore store = data.store();
      long dataReady = System.currentTimeMillis();
      RankLog log = new RankLog(rank);
      log.add("data loaded: " + store.rows() + " rows as Arrow batches" + (data.validation() == null ? ""
          : " + " + data.validation().rows() + " validation rows") + " (stage attempt " + ctx.stageAttemptNumber()
          + ")");
      String resolved = Backends.resolve(device, wc);
      if ("cuda".equals(resolved) && wc.worldSize() > 1) {
        // One collective on every rank before NCCL starts: Note [distinct GPUs]. Ranks resolve "auto" alike
        // (one resource profile, or one host in local mode); were they to differ, the communicator's own
        // rendezvous would get a message it cannot parse and fail, not hang. CPU training skips this one (it
        // costs ~1 s where the ranks meet through BarrierTaskContext.allGather).
        GpuPlacement.check(wc, wc.gpuPlacementKey());
      }
      String trainedIn = Backends.resolvePrecision(precision, resolved); // every rank resolves alike
      boolean searchExpected = "cuda".equals(resolved) && CudnnBenchmark.apply(cudnnBenchmark); // before the device
      long tResolved = System.currentTimeMillis();
      try (ProgressReporter reporter = ProgressReporter.start(progress, rank, wc.worldSize(),
              ProgressReporter.DEFAULT_MIN_INTERVAL_NANOS)
              .plan(cfg.epochs(), steps, cfg.accumulation(), cfg.batchSize());
          Device dev = Backends.openDevice(resolved, wc)) {
        long tDevice = System.currentTimeMillis();
        if ("cuda".equals(resolved)) {
          String warning = CudnnBenchmark.mismatch(cudnnBenchmark, searchExpected, CudnnBenchmark.inEffect());
          if (warning != null) {
            LOG.warn("rank " + rank + ": " + warning);
            log.add(warning);
          }
        }
        Communicator comm = Backends.openCommunicator(dev, wc, wc.host(), Duration.ofSeconds(timeoutSeconds));
        long tComm = System.currentTimeMillis();
        log.add("device " + dev.name() + ", communicator " + comm.getClass().getSimpleName() + " up, precision "
            + trainedIn);
        try {
          ModelSpec spec = ModelSpec.fromJson(specJson);
          if (copyEngine && shardOptimizer && dev instanceof dev.sparktrainer.cuda.CudaDevice cuda) {
            cuda.preferRegistrableMemory(true); // the model's buffers, before it is built
          }
          Model model = new Model(spec, dev, Backends.computeDType(trainedIn),
              gradientPrecision.equals("bf16") ? DType.BFLOAT16 : DType.FLOAT32);
          // The gradient dtype in effect: bf16 applies only on the fused linear path, else the model keeps fp32.
          String grads = model.gradientDType() == DType.BFLOAT16 ? "bf16" : "fp32";
          log.add("model built, precision " + trainedIn + ", gradients " + grads);
          if (grads.equals("bf16")) {
            LOG.info("rank {}: bf16 gradients (Note [bf16 gradients] in nn.Model)", rank);
          } else if (!grads.equals(gradientPrecision)) {
            LOG.warn("rank " + rank + ": gradientPrecision " + gradientPrecision + " does not apply here, the "
                + "gradients are " + grads + " (bf16 gradients need cuda, precision bf16 and a model whose every layer "
                + "with parameters is linear)");
          }
          ValidationPass validation = data.validation() == null ? null
              : new ValidationPass(model, cfg.loss(), comm, data.validation(), cfg.batchSize(), validationRows);
          List<TrainingSummary.Validation> validated = new ArrayList<>();
          Trainer trainer = new Trainer(model, cfg, comm).cudaGraphs(cudaGraphs).shardOptimizer(shardOptimizer)
              .copyEngineCollectives(copyEngine);
          if (!"auto".equals(allReduceMode)) {
            trainer.allReduceMode(Trainer.AllReduceMode.parse(allReduceMode));
          }
          if (gemmSmCarveout != Trainer.GEMM_SM_CARVEOUT_AUTO) {
            trainer.gemmSmCarveout(gemmSmCarveout);
          }
          trainer
              // progress only: no listener here reads device memory (a reading one would keep the optimizer unsharded)
              .onStepProgress(log.stepLogger().andThen(FaultInjection.forTask(ctx, rank)).andThen(reporter::onStep))
              .onEpochEnd(e -> {
                log.add(String.format(java.util.Locale.ROOT, "epoch %d done: loss %.4f, %.0f samples/s",
                    e.epoch() + 1, e.loss(), e.samplesPerSecond()));
                reporter.epoch(e);
                if (validation != null) {
                  // A collective: every rank's epoch-end hook runs it at the same point (Note [validation sums]).
                  TrainingSummary.Validation v = validation.run(e.epoch());
                  validated.add(v);
                  log.add(String.format(java.util.Locale.ROOT, "epoch %d validation: loss %.4f%s (%d rows)",
                      e.epoch() + 1, v.loss(), Double.isNaN(v.accuracy()) ? ""
                          : String.format(java.util.Locale.ROOT, ", accuracy %.4f", v.accuracy()), v.rows()));
                  if (rank == 0) { // every rank holds the same figures
                    reporter.validation(v);
                  }
                }
              });
          CheckpointData resumeFrom = null;
          if (checkpoints != null) {
            trainer.checkpointing(checkpoints, hadoopConf.value());
            resumeFrom = findCheckpoint(wc);
          }
          if (resumeFrom != null) {
            trainer.resume(resumeFrom);
          } else {
            trainer.initializeWeights();
          }
          int[] local = data.local();
          long firstStep = System.currentTimeMillis();
          if (rank == 0) {
            LOG.info("rank 0: data ready -> first step {} ms: device choice {} ms, progress + device {} ms, "
                + "communicator {} ms, model + initial weights {} ms ({}, world {})", firstStep - dataReady,
                tResolved - dataReady, tDevice - tResolved, tComm - tDevice, firstStep - tComm, dev.name(),
                wc.worldSize());
          }
          List<EpochStats> stats = trainer.fit(store, local, steps);
          reporter.done(ProgressReporter.peakMemory(dev), dev.name());
          float[] params = model.parametersToHost();
          // The ranks must agree on the trainable prefix; buffers (batch-norm running statistics) are per rank,
          // as in PyTorch DDP (Note [buffers] in ParameterSet), and rank 0's are the model's.
          float[] trained = java.util.Arrays.copyOf(params, Math.toIntExact(model.parameters().trainableElements()));
          result = new TaskResult(rank, stats, List.copyOf(validated), rank == 0 ? params : null, digest(trained),
              start, dataReady, tComm, firstStep, System.currentTimeMillis(), dev.name(), trainedIn);
          comm.close();
        } catch (IOException e) {
          comm.abort();
          throw new UncheckedIOException("rank " + rank + ": reading the checkpoint failed", e);
        } catch (RuntimeException | Error e) {
          try {
            comm.abort();
          } catch (RuntimeException suppressed) {
            e.addSuppressed(suppressed);
          }
          if (e instanceof Error err) {
            throw err;
          }
          throw log.failure("failed", e);
        }
      }
    }
    return result;
  }

  /**
   * On a (re)started stage, rank 0 picks the newest valid checkpoint of this fit and tells the others which
   * one, so every rank restores the same file. Returns null when there is none.
   */
  private CheckpointData findCheckpoint(SparkWorkerContext wc) throws IOException {
    String chosen = "";
    if (wc.rank() == 0) {
      List<CheckpointInfo> valid = CheckpointIO.listValid(checkpoints.dir(), hadoopConf.value());
      chosen = valid.isEmpty() ? "" : valid.get(valid.size() - 1).path();
    }
    String path = wc.allGather(chosen).get(0);
    if (path.isEmpty()) {
      return null;
    }
    LOG.info("rank " + wc.rank() + " resumes from " + path);
    return CheckpointIO.read(path, hadoopConf.value());
  }

  static long digest(float[] params) {
    ByteBuffer b = ByteBuffer.allocate(params.length * 4).order(ByteOrder.LITTLE_ENDIAN);
    b.asFloatBuffer().put(params);
    CRC32 crc = new CRC32();
    crc.update(b);
    return crc.getValue() ^ ((long) params.length << 32);
  }
}
