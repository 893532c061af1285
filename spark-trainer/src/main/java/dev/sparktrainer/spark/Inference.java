package dev.sparktrainer.spark;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.ml.linalg.Vectors;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;

/**
 * Batched inference over one partition: rows are grouped into batches, run through the model on the CPU
 * device (one forward per batch), and returned with prediction (and probability) columns appended. The last
 * input column is the prepared array<float> features column, which is dropped from the output.
 */
public final class Inference implements MapPartitionsFunction<Row, Row> {
  private static final long serialVersionUID = 1L;
  private final String specJson;
  private final Loss loss;
  private final Broadcast<float[]> weights;
  private final int batch;
  private final int inputColumns;

  public Inference(String specJson, Loss loss, Broadcast<float[]> weights, int batch, int inputColumns) {
    this.specJson = specJson;
    this.loss = loss;
    this.weights = weights;
    this.batch = batch;
    this.inputColumns = inputColumns;
  }

  @Override
  public Iterator<Row> call(Iterator<Row> input) {
    ModelSpec spec = ModelSpec.fromJson(specJson);
    CpuDevice device = new CpuDevice();
    Model model = new Model(spec, device);
    model.loadParameters(weights.value());
    int dim = spec.inputSize();
    int out = spec.outputSize();
    Layer.Context ctx = new Layer.Context(false, 0, 0);
    float[] x = new float[batch * dim];
    float[] y = new float[batch * out];
    return new Iterator<>() {
      private final List<Row> pending = new ArrayList<>();
      private final java.util.Map<Integer, Tensor[]> buffers = new java.util.HashMap<>(); // by batch rows
      private int next;

      @Override
      public boolean hasNext() {
        if (next < pending.size()) {
          return true;
        }
        fill();
        return next < pending.size();
      }

      @Override
      public Row next() {
        if (!hasNext()) {
          throw new NoSuchElementException();
        }
        return pending.get(next++);
      }

      private void fill() {
        List<Row> in = new ArrayList<>(batch);
        while (in.size() < batch && input.hasNext()) {
          Row r = input.next();
          List<Float> f = r.getList(inputColumns);
          if (f == null || f.size() != dim) {
            throw new IllegalArgumentException("row has " + (f == null ? "null" : f.size() + "")
                + " features; the model needs " + dim);
          }
          int base = in.size() * dim;
          for (int j = 0; j < dim; j++) {
            x[base + j] = f.get(j);
          }
          in.add(r);
        }
        pending.clear();
        next = 0;
        if (in.isEmpty()) {
          device.close();
          return;
        }
        int n = in.size();
        Tensor[] bufs = buffers.computeIfAbsent(n, m -> new Tensor[] {
            device.allocate(DType.FLOAT32, m, dim), device.allocate(DType.FLOAT32, m, out)});
        device.upload(x, 0, bufs[0]);
        Tensor logits = model.forward(bufs[0], ctx);
        if (loss == Loss.CROSS_ENTROPY) {
          device.softmax(logits, bufs[1]);
          logits = bufs[1];
        }
        device.download(logits, y, 0);
        for (int k = 0; k < n; k++) {
          Row r = in.get(k);
          Object[] vals = new Object[inputColumns + (loss == Loss.CROSS_ENTROPY ? 2 : 1)];
          for (int c = 0; c < inputColumns; c++) {
            vals[c] = r.get(c);
          }
          double[] row = new double[out];
          int best = 0;
          for (int j = 0; j < out; j++) {
            row[j] = y[k * out + j];
            if (row[j] > row[best]) {
              best = j;
            }
          }
          if (loss == Loss.CROSS_ENTROPY) {
            vals[inputColumns] = (double) best;
            vals[inputColumns + 1] = Vectors.dense(row);
          } else {
            vals[inputColumns] = out == 1 ? (Object) row[0] : Vectors.dense(row);
          }
          pending.add(RowFactory.create(vals));
        }
      }
    };
  }
}
