package dev.sparktrainer.train;

import dev.sparktrainer.data.RowStore;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;

/** Batched evaluation (no gradients, dropout off): mean loss and accuracy over every row of a store. */
public final class Evaluator {
  private Evaluator() {}

  /** Loss and accuracy (NaN for MSE) of the model on all rows. */
  public record Result(long rows, double loss, double accuracy) {}

  public static Result evaluate(Model model, Loss loss, RowStore store, int batch) {
    Device d = model.device();
    int n = store.rows();
    int dim = store.dim();
    float[] xf = new float[batch * dim];
    int[] yl = store.targetDim() == 0 ? new int[batch] : null;
    float[] yt = store.targetDim() == 0 ? null : new float[batch * store.targetDim()];
    int[] idx = new int[batch];
    Tensor lossSum = d.allocate(DType.FLOAT32, 1);
    Tensor correct = d.allocate(DType.FLOAT32, 1);
    Layer.Context ctx = new Layer.Context(false, 0, 0);
    java.util.Map<Integer, Tensor[]> bufs = new java.util.HashMap<>(); // by batch size: at most two sizes
    for (int start = 0; start < n; start += batch) {
      int m = Math.min(batch, n - start);
      for (int k = 0; k < m; k++) {
        idx[k] = start + k;
      }
      store.gather(idx, 0, m, xf, yl, yt);
      Tensor[] t = bufs.computeIfAbsent(m, size -> new Tensor[] {
          d.allocate(DType.FLOAT32, size, dim),
          yl != null ? d.allocate(DType.INT32, size) : d.allocate(DType.FLOAT32, size, store.targetDim()),
          d.allocate(DType.FLOAT32, size)});
      Tensor x = t[0];
      Tensor y = t[1];
      Tensor losses = t[2];
      d.upload(xf, 0, x);
      if (yl != null) {
        d.upload(yl, 0, y);
      } else {
        d.upload(yt, 0, y);
      }
      Tensor out = model.forward(x, ctx);
      loss.compute(d, out, y, losses, null, 1f);
      d.sumInto(losses, lossSum);
      if (loss == Loss.CROSS_ENTROPY) {
        d.countCorrect(out, y, correct);
      }
    }
    float[] h = new float[1];
    d.download(lossSum, h, 0);
    double l = h[0] / n;
    d.download(correct, h, 0);
    return new Result(n, l, loss == Loss.CROSS_ENTROPY ? h[0] / n : Double.NaN);
  }
}
