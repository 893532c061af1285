package dev.sparktrainer.train;

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

    List<EpochStats> stats = new ArrayList<>();
    for (int epoch = 0; epoch < config.epochs(); epoch++) {
      int[] order = epochOrder(local, epoch);
      device.fill(lossSum, 0f);
      device.fill(correct, 0f);
      long t0 = System.nanoTime();
      long commNanos = 0;
      long waitNanos;
      try (BatchLoader loader = new BatchLoader(store, order, b, stepsPerEpoch, 2)) {
        int micro = 0;
        for (int t = 0; t < stepsPerEpoch; t++) {
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
            clip();
            optimizer.step(schedule.lr(config.optimizer().lr(), optimizerStep));
            optimizerStep++;
            micro = 0;
            stepListener.accept(optimizerStep);
          }
        }
        waitNanos = loader.waitNanos();
      }
      device.synchronize();
      double seconds = (System.nanoTime() - t0) / 1e9;
      long samples = (long) stepsPerEpoch * b;
      float[] host = new float[1];
      device.download(lossSum, host, 0);
      double meanLoss = host[0] / samples;
      device.download(correct, host, 0);
      double acc = loss == Loss.CROSS_ENTROPY ? host[0] / samples : Double.NaN;
      stats.add(new EpochStats(epoch, comm.rank(), samples, meanLoss, acc, seconds, waitNanos / 1e9,
          seconds - waitNanos / 1e9 - commNanos / 1e9, commNanos / 1e9));
    }
    return stats;
  }

  private void clip() {
    if (config.clipNorm() <= 0) {
      return;
    }
    double norm = Math.sqrt(device.sumSquares(model.parameters().grads()));
    if (norm > config.clipNorm()) {
      device.scale(model.parameters().grads(), (float) (config.clipNorm() / (norm + 1e-6)));
    }
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
