package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.file.Files;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** End to end: fit on Fashion-MNIST through Spark, W = 2, MLP 784-256-128-10, 3 epochs, >= 86% test accuracy. */
@Timeout(600)
class FashionMnistSparkTest {
  @Test
  void twoWorkersReach86PercentOnTheTestSet() {
    assumeTrue(Files.isDirectory(FashionMnist.DEFAULT_DIR),
        "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); .ci/run installs it");
    SparkSession spark = SparkTestSession.start("FashionMnistSparkTest");
    try {
      Dataset<Row> train = FashionMnistSource.load(spark, FashionMnist.DEFAULT_DIR, "train", 4);
      Dataset<Row> test = FashionMnistSource.load(spark, FashionMnist.DEFAULT_DIR, "t10k", 4);
      SparkTrainerModel model = new SparkTrainer()
          .setModelSpec(ModelSpec.mlp(784, new int[] {256, 128}, 10, "relu", 0f))
          .setOptimizer(OptimizerConfig.adamw(1e-3))
          .setNumWorkers(2).setBatchSize(128).setEpochs(3).setSeed(42).setDevice("cpu")
          .fit(train);
      assertEquals(3, model.summary().epochs().size());
      Dataset<Row> pred = model.transform(test);
      double acc = pred.filter("prediction = cast(label as double)").count() / (double) pred.count();
      assertTrue(acc >= 0.86, "test accuracy " + acc);
      System.out.println("FashionMnistSparkTest: " + model.summary() + "\ntest accuracy " + acc);
    } finally {
      spark.stop();
    }
  }
}
