package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.stream.IntStream;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A CNN with batch norm through Spark (W = 2) on a Fashion-MNIST subset: features are the array<float>[784]
 * column, reshaped by the model spec's input [1, 28, 28]; the trained model carries rank 0's batch-norm
 * running statistics (buffers in the flat parameter buffer), uses them in transform, and keeps them through
 * save/load. One epoch on 4096 rows: accuracy on 1000 test rows far above chance.
 */
@Timeout(300)
class CnnSparkTest {
  static final ModelSpec SPEC = ModelSpec.builder().input(1, 28, 28)
      .conv2d(ModelSpec.Conv.of(16, 3, 1, 1), false).batchNorm2d().relu().maxPool2d(2, 2, 0)
      .conv2d(ModelSpec.Conv.of(32, 3, 1, 1), false).batchNorm2d().relu().maxPool2d(2, 2, 0)
      .flatten().linear(10).build();

  @Test
  void batchNormCnnTrainsThroughSparkAndSavesItsStatistics(@TempDir Path dir) throws Exception {
    assumeTrue(Files.isDirectory(FashionMnist.DEFAULT_DIR),
        "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); .ci/run installs it");
    SparkSession spark = SparkTestSession.start("CnnSparkTest");
    try {
      Dataset<Row> train = FashionMnistSource.load(spark, FashionMnist.DEFAULT_DIR, "train", 2).limit(4096)
          .repartition(2).cache();
      Dataset<Row> test = FashionMnistSource.load(spark, FashionMnist.DEFAULT_DIR, "t10k", 2).limit(1000).cache();
      SparkTrainerModel model = new SparkTrainer().setModelSpec(SPEC).setOptimizer(OptimizerConfig.adamw(2e-3))
          .setNumWorkers(2).setBatchSize(32).setEpochs(1).setSeed(3).setDevice("cpu").fit(train);
      Dataset<Row> pred = model.transform(test);
      double acc = pred.filter("prediction = cast(label as double)").count() / (double) pred.count();
      System.out.println("CnnSparkTest: " + model.summary() + "\ntest accuracy " + acc);
      assertTrue(acc >= 0.70, "test accuracy " + acc + " (chance 0.10)");

      // the running statistics came back from rank 0: no longer the initial mean 0 / variance 1
      try (CpuDevice d = new CpuDevice()) {
        ParameterSet layout = new Model(SPEC, d).parameters();
        for (ParameterSet.Entry e : layout.entries()) {
          if (!e.trainable()) {
            float[] v = Arrays.copyOfRange(model.parameters(), (int) e.offset(), (int) (e.offset() + e.numel()));
            float initial = e.name().endsWith("running_var") ? 1f : 0f;
            assertTrue(IntStream.range(0, v.length).allMatch(k -> v[k] != initial), e.name() + " was updated");
          }
        }
      }

      String path = dir.resolve("model").toString();
      model.write().overwrite().save(path);
      SparkTrainerModel loaded = SparkTrainerModel.load(path);
      assertEquals(SPEC, loaded.spec());
      assertArrayEquals(model.parameters(), loaded.parameters(), "weights and running statistics");
      List<Row> a = model.transform(test).select("prediction").collectAsList();
      List<Row> b = loaded.transform(test).select("prediction").collectAsList();
      assertEquals(a, b);
    } finally {
      spark.stop();
    }
  }
}
