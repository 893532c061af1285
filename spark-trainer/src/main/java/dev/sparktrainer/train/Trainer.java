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
import dev.sparktrainer.engine.Rng;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.Optimizer;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.List;
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
 */
public final class Trainer {
  private final Model model;
  private final TrainerConfig config;
  private final Communicator comm;
  private final Device device;
  private final Optimizer optimizer;
  private Consumer<Long> stepListener = s -> { };
  private long optimizerStep;
  private CheckpointPolicy checkpoints;
  // Note [non-finite check]: with nonFinite=fail and no clipping, the check costs a reduction (and on GPU
  // a wait) per step; it runs every step by default. Turning it off leaves NaNs to show in the loss.
  private boolean checkEveryStep = true;
  private org.apache.hadoop.conf.Configuration hadoopConf;

  public Trainer(Model model, TrainerConfig config, Communicator comm) {
    this.model = model;
    this.config = config;
    this.comm = comm;
    this.device = model.device();
    this.optimizer = config.optimizer().create(device, model.parameters());
  }

  /** Called after every optimizer step with the step number (tests check invariants here). */
  public Trainer onStep(Consumer<Long> listener) {
    this.stepListener = listener;
    return this;
  }

  /** Whether steps check their gradients for NaN/Inf when nothing else needs the norm (default true). */
  public Trainer checkNonFinite(boolean everyStep) {
    this.checkEveryStep = everyStep;
    return this;
  }

  /** Rank 0 writes checkpoints under this policy (other ranks never write). */
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
    long totalOptSteps = (long) config.epochs() * ((stepsPerEpoch + accum - 1) / accum);
    LrSchedule schedule = config.schedule().withDefaultTotal(totalOptSteps);
    int dim = store.dim();
    int outDim = model.spec().outputSize();
    Loss loss = config.loss();
    Tensor x = device.allocate(DType.FLOAT32, b, dim);
    Tensor y = loss == Loss.CROSS_ENTROPY ? device.allocate(DType.INT32, b)
        : device.allocate(DType.FLOAT32, b, store.targetDim());
    Tensor losses = device.allocate(DType.FLOAT32, b);
    Tensor dOut = device.allocate(DType.FLOAT32, b, outDim);
    Tensor lossSum = device.allocate(DType.FLOAT32, 1);
    Tensor correct = device.allocate(DType.FLOAT32, 1);
    float gradScale = 1f / ((float) b * comm.worldSize() * accum);

    long optStepsPerEpoch = (stepsPerEpoch + accum - 1) / accum;
    int firstEpoch = (int) (optimizerStep / optStepsPerEpoch);
    List<EpochStats> stats = new ArrayList<>();
    for (int epoch = firstEpoch; epoch < config.epochs(); epoch++) {
      int[] order = epochOrder(local, epoch);
      // On resume, the first epoch skips the micro-batches whose optimizer steps are done.
      int skip = (int) Math.min(stepsPerEpoch, (optimizerStep - epoch * optStepsPerEpoch) * accum);
      device.fill(lossSum, 0f);
      device.fill(correct, 0f);
      long t0 = System.nanoTime();
      long commNanos = 0;
      long skipped = 0;
      long waitNanos;
      int[] todo = skip == 0 ? order : java.util.Arrays.copyOfRange(order, skip * b, order.length);
      try (BatchLoader loader = new BatchLoader(store, todo, b, stepsPerEpoch - skip, 2)) {
        int micro = 0;
        for (int t = skip; t < stepsPerEpoch; t++) {
          HostBatch batch = loader.next();
          if (micro == 0) {
            model.zeroGrad();
          }
          device.upload(batch.features, 0, x);
          if (batch.labels != null) {
            device.upload(batch.labels, 0, y);
          } else {
            device.upload(batch.targets, 0, y);
          }
          Layer.Context ctx = new Layer.Context(true, config.seed(), optimizerStep * accum + micro);
          Tensor out = model.forward(x, ctx);
          float scale = gradScale;
          boolean last = t == stepsPerEpoch - 1;
          int groupSize = micro + 1;
          loss.compute(device, out, y, losses, dOut, scale);
          model.backward(dOut, ctx);
          device.sumInto(losses, lossSum);
          if (loss == Loss.CROSS_ENTROPY) {
            device.countCorrect(out, y, correct);
          }
          micro++;
          if (micro == accum || last) {
            if (groupSize < accum) {
              device.scale(model.parameters().grads(), (float) accum / groupSize);
            }
            long c0 = System.nanoTime();
            comm.allReduceSum(model.parameters().grads());
            device.synchronize();
            commNanos += System.nanoTime() - c0;
            if (checkFinite(epoch)) {
              optimizer.step(schedule.lr(config.optimizer().lr(), optimizerStep));
            } else {
              skipped++;
              optimizer.setSteps(optimizer.steps() + 1);
            }
            optimizerStep++;
            micro = 0;
            stepListener.accept(optimizerStep);
            if (checkpoints != null && (last || (checkpoints.interval() > 0
                && optimizerStep % checkpoints.interval() == 0))) {
              writeCheckpoint(last ? epoch + 1 : epoch);
            }
          }
        }
        waitNanos = loader.waitNanos();
      }
      device.synchronize();
      double seconds = (System.nanoTime() - t0) / 1e9;
      long samples = (long) (stepsPerEpoch - skip) * b;
      float[] host = new float[1];
      device.download(lossSum, host, 0);
      double meanLoss = host[0] / samples;
      device.download(correct, host, 0);
      double acc = loss == Loss.CROSS_ENTROPY ? host[0] / samples : Double.NaN;
      stats.add(new EpochStats(epoch, comm.rank(), samples, meanLoss, acc, seconds, waitNanos / 1e9,
          seconds - waitNanos / 1e9 - commNanos / 1e9, commNanos / 1e9, skipped));
    }
    return stats;
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
