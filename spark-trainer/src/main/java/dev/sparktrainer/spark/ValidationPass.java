package dev.sparktrainer.spark;

import dev.sparktrainer.api.TrainingSummary;
import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.data.RowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;

/**
 * The validation of one epoch inside the barrier stage: every rank evaluates its shard of the validation set
 * (no gradients, dropout off), then the ranks add up loss, correct predictions and rows, so every rank (and
 * the driver, through rank 0's result) holds the same figures.
 *
 * <h2>Note [validation sums]</h2>
 * Per batch, the per-row losses and the count of correct rows come to the host and are added in double.
 * The ranks' three sums are then exchanged exactly through one all-reduce: rank r writes its sums, each
 * split into two floats (hi = (float) x, lo = (float) (x - hi), 48 significant bits), into its own slots
 * of a W x 6 buffer and zeros elsewhere, so every slot sums one value and zeros, which is exact in any
 * order. Every rank then adds the W ranks' sums in double in rank order: the same bits on every rank,
 * whatever the communicator's summation order. A collective: every rank calls {@link #run} at the same
 * point of every epoch (the trainer's epoch-end hook).
 *
 * <p>Models with buffers (batch norm's running statistics, which the ranks keep for themselves, see Note
 * [buffers] in ParameterSet) are evaluated with rank 0's buffers, i.e. as the model the fit returns: each
 * rank saves its own, takes rank 0's for the evaluation and puts its own back, so training is unchanged.
 */
final class ValidationPass {
  private static final int SLOTS = 6;
  private final Model model;
  private final Loss loss;
  private final Communicator comm;
  private final RowStore shard;
  private final int batch;
  private final long totalRows;
  private final Device device;
  private final Tensor sums; // (W * SLOTS) float32
  private final Tensor correct; // (1) float32
  private final int[] idx;
  private final float[] features;
  private final int[] labels;
  private final float[] targets;
  private final float[] losses;
  private Tensor[] full; // x, y, losses for a whole batch
  private Tensor[] tail; // the same for the last, shorter batch

  /**
   * @param shard this rank's validation rows (may be empty)
   * @param totalRows validation rows over all ranks (a check that every row was evaluated once)
   */
  ValidationPass(Model model, Loss loss, Communicator comm, RowStore shard, int batch, long totalRows) {
    this.model = model;
    this.loss = loss;
    this.comm = comm;
    this.shard = shard;
    this.batch = batch;
    this.totalRows = totalRows;
    this.device = model.device();
    this.sums = device.allocate(DType.FLOAT32, comm.worldSize() * SLOTS);
    this.correct = device.allocate(DType.FLOAT32, 1);
    this.idx = new int[batch];
    this.features = new float[batch * shard.dim()];
    this.labels = shard.targetDim() == 0 ? new int[batch] : null;
    this.targets = shard.targetDim() == 0 ? null : new float[batch * shard.targetDim()];
    this.losses = new float[batch];
  }

  /** Evaluates the model on every rank's shard and returns the figures of {@code epoch} (a collective). */
  TrainingSummary.Validation run(int epoch) {
    ParameterSet p = model.parameters();
    int bufferElements = Math.toIntExact(p.totalElements() - p.trainableElements());
    Tensor buffers = bufferElements > 0 ? p.params().view(p.trainableElements(), bufferElements) : null;
    float[] own = null;
    if (buffers != null && comm.worldSize() > 1) {
      own = new float[bufferElements];
      device.download(buffers, own, 0);
      comm.broadcast(buffers, 0);
    }
    double[] mine;
    try {
      mine = evaluateShard();
    } finally {
      if (own != null) {
        device.upload(own, 0, buffers);
      }
    }
    float[] slots = new float[comm.worldSize() * SLOTS];
    int at = comm.rank() * SLOTS;
    for (int k = 0; k < 3; k++) {
      float hi = (float) mine[k];
      slots[at + 2 * k] = hi;
      slots[at + 2 * k + 1] = (float) (mine[k] - hi);
    }
    device.upload(slots, 0, sums);
    comm.allReduceSum(sums);
    device.synchronize();
    device.download(sums, slots, 0);
    double lossSum = 0;
    double right = 0;
    double rows = 0;
    for (int r = 0; r < comm.worldSize(); r++) {
      int o = r * SLOTS;
      lossSum += (double) slots[o] + slots[o + 1];
      right += (double) slots[o + 2] + slots[o + 3];
      rows += (double) slots[o + 4] + slots[o + 5];
    }
    if (rows != totalRows) {
      throw new IllegalStateException("rank " + comm.rank() + ": the ranks evaluated " + (long) rows
          + " validation rows, the validation set has " + totalRows + " (please report this as a bug)");
    }
    return new TrainingSummary.Validation(epoch, totalRows, lossSum / rows,
        loss == Loss.CROSS_ENTROPY ? right / rows : Double.NaN);
  }

  /** This rank's {loss sum, correct rows, rows} over its shard, in batches of {@code batch} rows. */
  private double[] evaluateShard() {
    int n = shard.rows();
    int dim = shard.dim();
    Layer.Context ctx = new Layer.Context(false, 0, 0);
    double lossSum = 0;
    double right = 0;
    float[] one = new float[1];
    for (int start = 0; start < n; start += batch) {
      int m = Math.min(batch, n - start);
      for (int k = 0; k < m; k++) {
        idx[k] = start + k;
      }
      shard.gather(idx, 0, m, features, labels, targets);
      Tensor[] t = buffers(m, dim);
      device.upload(features, 0, t[0]);
      if (labels != null) {
        device.upload(labels, 0, t[1]);
      } else {
        device.upload(targets, 0, t[1]);
      }
      Tensor out = model.forward(t[0], ctx);
      loss.compute(device, out, t[1], t[2], null, 1f);
      device.download(t[2], losses, 0);
      for (int k = 0; k < m; k++) {
        lossSum += losses[k];
      }
      if (loss == Loss.CROSS_ENTROPY) {
        device.fill(correct, 0f);
        device.countCorrect(out, t[1], correct);
        device.download(correct, one, 0);
        right += one[0];
      }
    }
    return new double[] {lossSum, right, n};
  }

  /** Device buffers (x, y, per-row losses) for a batch of m rows: one set for full batches, one for the tail. */
  private Tensor[] buffers(int m, int dim) {
    if (m == batch) {
      if (full == null) {
        full = allocate(m, dim);
      }
      return full;
    }
    if (tail == null || tail[0].dim(0) != m) {
      tail = allocate(m, dim);
    }
    return tail;
  }

  private Tensor[] allocate(int m, int dim) {
    Tensor y = labels != null ? device.allocate(DType.INT32, m)
        : device.allocate(DType.FLOAT32, m, shard.targetDim());
    return new Tensor[] {device.allocate(DType.FLOAT32, m, dim), y, device.allocate(DType.FLOAT32, m)};
  }
}
