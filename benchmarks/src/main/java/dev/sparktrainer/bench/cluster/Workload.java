package dev.sparktrainer.bench.cluster;

import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.nn.ModelZoo;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.Iterator;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * One benchmark of the cluster suite at one scale: the network, the per-worker batch, the synthetic rows per
 * worker and the optimizer.
 *
 * <table>
 * <caption>the benchmarks at each scale (batch per worker; rows per worker)</caption>
 * <tr><th>name</th><th>tiny (CI)</th><th>small (CPU clusters)</th><th>full (GPU clusters)</th></tr>
 * <tr><td>mlp</td><td>MLP 64-128-128-10, 64; 2,048</td><td>784-256-128-10, 128; 16,384</td>
 *     <td>1024-8192x4-1000 (the GPU suite's), 4096; 131,072</td></tr>
 * <tr><td>small-cnn</td><td colspan="3">Fashion-MNIST CNN ({@link ModelZoo#fashionMnistCnn()}, 1x28x28):
 *     32; 128 / 64; 4,096 / 512; 30,720</td></tr>
 * <tr><td>resnet50</td><td>{@link ModelZoo#resnet50} 3x32x32, 10 classes, 8; 32</td>
 *     <td>3x64x64, 100 classes, 16; 256</td><td>3x224x224, 1000 classes, 64; 1,280</td></tr>
 * </table>
 *
 * Optimizers: mlp SGD lr 0.01 momentum 0.9 (as the GPU suite); small-cnn AdamW 1e-3 (as the CNN benchmark);
 * resnet50 SGD lr 0.1 momentum 0.9 weight decay 1e-4 (torchvision's recipe).
 *
 * @param name benchmark name (one of {@link #NAMES})
 * @param scale the size preset
 * @param spec the network
 * @param model the network in words, for the report
 * @param features input size (the spec's input, flattened)
 * @param classes output classes
 * @param batch per-worker batch size
 * @param rowsPerWorker synthetic rows per worker
 * @param optimizer the optimizer
 * @param optimizerText the optimizer in words, for the report
 */
public record Workload(String name, Scale scale, ModelSpec spec, String model, int features, int classes, int batch,
    long rowsPerWorker, OptimizerConfig optimizer, String optimizerText) {

  /** The benchmark names, in the order the suite runs them by default. */
  public static final List<String> NAMES = List.of("mlp", "small-cnn", "resnet50");

  /** Size presets. */
  public enum Scale {
    /** Seconds per fit on 2 CPU cores: CI. */
    TINY,
    /** A CPU cluster, or a quick look at a GPU one. */
    SMALL,
    /** GPU clusters: the GPU suite's MLP, ResNet-50 at 224x224. */
    FULL;

    /** tiny, small or full; throws naming the choices. */
    public static Scale parse(String v) {
      try {
        return valueOf(v.trim().toUpperCase(Locale.ROOT));
      } catch (IllegalArgumentException e) {
        throw new IllegalArgumentException("--scale: '" + v + "' is not one of tiny, small, full");
      }
    }

    @Override
    public String toString() {
      return name().toLowerCase(Locale.ROOT);
    }
  }

  /** The benchmark at a scale; {@code batch} / {@code rowsPerWorker} > 0 override the preset's. */
  public static Workload of(String name, Scale scale, int batch, long rowsPerWorker) {
    Workload w = switch (name) {
      case "mlp" -> mlp(scale);
      case "small-cnn" -> smallCnn(scale);
      case "resnet50" -> resnet50(scale);
      default -> throw new IllegalArgumentException("unknown benchmark '" + name + "' (known: "
          + String.join(", ", NAMES) + ")");
    };
    return new Workload(w.name, w.scale, w.spec, w.model, w.features, w.classes, batch > 0 ? batch : w.batch,
        rowsPerWorker > 0 ? rowsPerWorker : w.rowsPerWorker, w.optimizer, w.optimizerText);
  }

  private static Workload mlp(Scale s) {
    int in;
    int[] hidden;
    int classes;
    int batch;
    long rows;
    switch (s) {
      case TINY -> {
        in = 64;
        hidden = new int[] {128, 128};
        classes = 10;
        batch = 64;
        rows = 2048;
      }
      case SMALL -> {
        in = 784;
        hidden = new int[] {256, 128};
        classes = 10;
        batch = 128;
        rows = 16384;
      }
      default -> {
        in = 1024;
        hidden = new int[] {8192, 8192, 8192, 8192};
        classes = 1000;
        batch = 4096;
        rows = 32L * 4096;
      }
    }
    StringBuilder m = new StringBuilder("MLP ").append(in);
    for (int h : hidden) {
      m.append('-').append(h);
    }
    m.append('-').append(classes).append(" ReLU");
    return new Workload("mlp", s, ModelSpec.mlp(in, hidden, classes, "relu", 0f), m.toString(), in, classes, batch,
        rows, OptimizerConfig.sgd(0.01).withMomentum(0.9), "SGD lr 0.01 momentum 0.9");
  }

  private static Workload smallCnn(Scale s) {
    int batch = s == Scale.TINY ? 32 : s == Scale.SMALL ? 64 : 512;
    long rows = s == Scale.TINY ? 128 : s == Scale.SMALL ? 4096 : 60L * 512;
    return new Workload("small-cnn", s, ModelZoo.fashionMnistCnn(),
        "Fashion-MNIST CNN 1x28x28: conv3x3(32)-relu-pool-conv3x3(64)-relu-pool-fc128-relu-fc10", 784, 10, batch,
        rows, OptimizerConfig.adamw(1e-3), "AdamW lr 0.001");
  }

  private static Workload resnet50(Scale s) {
    int side = s == Scale.TINY ? 32 : s == Scale.SMALL ? 64 : 224;
    int classes = s == Scale.TINY ? 10 : s == Scale.SMALL ? 100 : 1000;
    int batch = s == Scale.TINY ? 8 : s == Scale.SMALL ? 16 : 64;
    long rows = s == Scale.TINY ? 32 : s == Scale.SMALL ? 256 : 20L * 64;
    return new Workload("resnet50", s, ModelZoo.resnet50(classes, 3, side, side),
        "ResNet-50 (torchvision layout) 3x" + side + "x" + side + ", " + classes + " classes", 3 * side * side,
        classes, batch, rows, OptimizerConfig.sgd(0.1).withMomentum(0.9).withWeightDecay(1e-4),
        "SGD lr 0.1 momentum 0.9 weight decay 1e-4");
  }

  /** Schema of the synthetic data: {@code features array<float>[features], label int}. */
  public static StructType schema() {
    return new StructType()
        .add("features", DataTypes.createArrayType(DataTypes.FloatType, false), false)
        .add("label", DataTypes.IntegerType, false);
  }

  /**
   * {@code rows} synthetic rows in {@code partitions} partitions, generated by the executors (the driver holds
   * none): row i has label i % classes and features N(0, 1) plus 1 on the inputs j with j % classes == label,
   * from a random stream seeded by (seed, i), so the same seed gives the same rows on any cluster.
   */
  public Dataset<Row> syntheticData(SparkSession spark, long rows, int partitions, long seed) {
    int dim = features;
    int k = classes;
    MapPartitionsFunction<Long, Row> gen = it -> generate(it, dim, k, seed);
    return spark.range(0, rows, 1, partitions).as(Encoders.LONG()).mapPartitions(gen, Encoders.row(schema()));
  }

  /** The rows of one partition, made one at a time; static so the closure captures no workload object. */
  static Iterator<Row> generate(Iterator<Long> ids, int dim, int classes, long seed) {
    return new Iterator<>() {
      @Override
      public boolean hasNext() {
        return ids.hasNext();
      }

      @Override
      public Row next() {
        long i = ids.next();
        SplittableRandom r = new SplittableRandom(seed * 0x9E3779B97F4A7C15L + i);
        int label = (int) (i % classes);
        float[] f = new float[dim];
        for (int j = 0; j < dim; j++) {
          f[j] = (float) r.nextGaussian() + (j % classes == label ? 1f : 0f);
        }
        return RowFactory.create(f, label);
      }
    };
  }
}
