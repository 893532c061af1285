package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineModel;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.ml.feature.VectorAssembler;
import org.apache.spark.ml.linalg.Vector;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** fit/transform/save/load through Spark on a small separable problem (fast), W = 1 and 2. */
@Timeout(300)
class SparkTrainerTest {
  static SparkSession spark;

  @BeforeAll
  static void start() {
    spark = SparkTestSession.start("SparkTrainerTest");
  }

  @AfterAll
  static void stop() {
    spark.stop();
  }

  /** Three Gaussian blobs in 4-D, columns a, b, c, d and label; deterministic. */
  static Dataset<Row> blobs(int n, long seed) {
    Random r = new Random(seed);
    List<Row> rows = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      int label = i % 3;
      rows.add(RowFactory.create(label * 2.0 + r.nextGaussian() * 0.5, -label + r.nextGaussian() * 0.5,
          r.nextGaussian(), label * 0.5 + r.nextGaussian() * 0.5, (double) label));
    }
    StructType schema = new StructType().add("a", DataTypes.DoubleType).add("b", DataTypes.DoubleType)
        .add("c", DataTypes.DoubleType).add("d", DataTypes.DoubleType).add("label", DataTypes.DoubleType);
    return spark.createDataFrame(rows, schema);
  }

  static SparkTrainer trainer(int workers) {
    return new SparkTrainer()
        .setModelSpec(ModelSpec.builder().input(4).linear(16).relu().linear(3).build())
        .setFeatureCols(new String[] {"a", "b", "c", "d"})
        .setOptimizer(OptimizerConfig.adamw(0.01))
        .setEpochs(8).setBatchSize(32).setNumWorkers(workers).setSeed(3).setDevice("cpu");
  }

  static double accuracy(Dataset<Row> predictions) {
    long right = predictions.filter("prediction = label").count();
    return right / (double) predictions.count();
  }

  @Test
  void fitTransformSaveLoadRoundTrip(@TempDir Path dir) throws Exception {
    Dataset<Row> df = blobs(600, 1);
    SparkTrainerModel model = trainer(2).fit(df);
    assertEquals(8, model.summary().epochs().size());
    assertEquals(2, model.summary().perRank().size());
    Dataset<Row> out = model.transform(df);
    assertTrue(accuracy(out) > 0.9, "accuracy " + accuracy(out));
    Row first = out.first();
    Vector p = first.getAs("probability");
    double sum = 0;
    for (double v : p.toArray()) {
      sum += v;
    }
    assertEquals(1.0, sum, 1e-5);

    String path = dir.resolve("model").toString();
    model.write().overwrite().save(path);
    SparkTrainerModel loaded = SparkTrainerModel.load(path);
    assertArrayEquals(model.parameters(), loaded.parameters());
    List<Row> a = out.select("prediction", "probability").collectAsList();
    List<Row> b = loaded.transform(df).select("prediction", "probability").collectAsList();
    assertEquals(a, b, "a loaded model must predict exactly what the saved one did");
  }

  @Test
  void pipelineWithVectorAssemblerSavesAndLoads(@TempDir Path dir) throws Exception {
    Dataset<Row> df = blobs(300, 2);
    VectorAssembler asm = new VectorAssembler().setInputCols(new String[] {"a", "b", "c", "d"})
        .setOutputCol("features");
    SparkTrainer est = trainer(1).setFeatureCols(new String[0]).setFeaturesCol("features");
    Pipeline pipeline = new Pipeline().setStages(new PipelineStage[] {asm, est});
    PipelineModel pm = pipeline.fit(df);
    List<Row> before = pm.transform(df).select("prediction").collectAsList();
    double acc = accuracy(pm.transform(df));
    assertTrue(acc > 0.85, "accuracy " + acc);
    String path = dir.resolve("pipeline").toString();
    pm.write().overwrite().save(path);
    List<Row> after = PipelineModel.load(path).transform(df).select("prediction").collectAsList();
    assertEquals(before, after);
    // the estimator itself persists too (Pipeline-compatible params)
    est.write().overwrite().save(dir.resolve("est").toString());
    SparkTrainer back = SparkTrainer.load(dir.resolve("est").toString());
    assertEquals(est.getModelSpec(), back.getModelSpec());
    assertEquals(est.getNumWorkers(), back.getNumWorkers());
  }

  @Test
  void sameSeedGivesBitwiseSameWeightsAndEqualStepsPerRank() {
    Dataset<Row> df = blobs(500, 3);
    SparkTrainerModel a = trainer(2).fit(df);
    SparkTrainerModel b = trainer(2).fit(df);
    assertArrayEquals(a.parameters(), b.parameters());
    long s0 = a.summary().perRank().get(0).get(0).samples();
    long s1 = a.summary().perRank().get(1).get(0).samples();
    assertEquals(s0, s1, "every rank must train on the same number of samples");
    // 500 rows, W*B = 64: 8 steps of 32 per rank (padded by wrapping)
    assertEquals(8 * 32, s0);
  }

  @Test
  void precisionReachesTheRanksAndIsSavedWithTheModel(@TempDir Path dir) throws Exception {
    Dataset<Row> df = blobs(600, 4).cache();
    String property = System.getProperty("sparktrainer.cudnn.benchmark");
    try {
      SparkTrainerModel fp32 = trainer(2).fit(df);
      SparkTrainerModel auto = trainer(2).setPrecision("auto").fit(df);
      // cudaGraphs is accepted; the CPU engine has no graphs, so the run is exactly the eager one.
      SparkTrainerModel graphs = trainer(2).setCudaGraphs(true).fit(df);
      assertArrayEquals(fp32.parameters(), graphs.parameters(), "cudaGraphs on the CPU engine changes nothing");
      // allReduceMode reaches the ranks (the TCP ring has one all-reduce after backward in every mode).
      SparkTrainerModel inOrder = trainer(2).setAllReduceMode("in_order").fit(df);
      assertArrayEquals(fp32.parameters(), inOrder.parameters(), "allReduceMode on the CPU engine changes nothing");
      assertThrows(IllegalArgumentException.class, () -> trainer(2).setAllReduceMode("sometimes"));
      // gemmSmCarveout is accepted and handed to the ranks' trainers; on the CPU (the TCP ring: no buckets overlap
      // backward, no SMs to leave) it changes nothing.
      SparkTrainerModel carved = trainer(2).setAllReduceMode("overlapped").setGemmSmCarveout(16).fit(df);
      assertArrayEquals(fp32.parameters(), carved.parameters(), "gemmSmCarveout on the CPU engine changes nothing");
      assertThrows(IllegalArgumentException.class, () -> trainer(2).setGemmSmCarveout(-2));
      // shardOptimizer reaches the ranks' trainers; the TCP ring has no asynchronous collectives, so they train
      // unsharded (each logs why) and the weights are the plain run's.
      SparkTrainerModel sharded = trainer(2).setShardOptimizer(true).fit(df);
      assertArrayEquals(fp32.parameters(), sharded.parameters(), "shardOptimizer on the CPU engine changes nothing");
      // copyEngineCollectives too: the TCP ring has none, so the ranks keep the plain path (each logs why)
      SparkTrainerModel ce = trainer(2).setShardOptimizer(true).setCopyEngineCollectives(true).fit(df);
      assertArrayEquals(fp32.parameters(), ce.parameters(), "copyEngineCollectives on the CPU engine changes nothing");
      SparkTrainer est = trainer(2).setPrecision("bf16").setCudnnBenchmark(true);
      SparkTrainerModel bf16 = est.fit(df);
      // gradientPrecision bf16 reaches the ranks' models; the CPU engine has no fused linear path, so they keep fp32
      // gradients (Note [bf16 gradients] in Model) and the run is exactly the bf16-precision one.
      SparkTrainerModel bf16Grads = trainer(2).setPrecision("bf16").setGradientPrecision("bf16").fit(df);
      assertArrayEquals(bf16.parameters(), bf16Grads.parameters(), "gradientPrecision bf16 on the CPU engine is fp32");
      assertEquals("fp32", fp32.summary().precision());
      assertEquals("fp32", fp32.getPrecision());
      assertEquals("fp32", auto.summary().precision(), "auto is fp32 on the CPU");
      assertArrayEquals(fp32.parameters(), auto.parameters());
      assertEquals("bf16", bf16.summary().precision());
      assertEquals("bf16", bf16.getPrecision());
      assertTrue(bf16.summary().toString().contains("on 2 x cpu, precision bf16"), bf16.summary().toString());
      // On the CPU engine bf16 rounds the linear layers' inputs, so the weights differ from fp32's, slightly.
      assertTrue(!java.util.Arrays.equals(fp32.parameters(), bf16.parameters()), "bf16 must reach the model");
      double acc = accuracy(bf16.transform(df));
      assertTrue(acc > 0.9, "accuracy " + acc);
      assertEquals(property, System.getProperty("sparktrainer.cudnn.benchmark"), "cudnnBenchmark: cuda only");

      String path = dir.resolve("bf16-model").toString();
      bf16.write().overwrite().save(path);
      SparkTrainerModel loaded = SparkTrainerModel.load(path);
      assertEquals("bf16", loaded.getPrecision());
      assertEquals("bf16", dev.sparktrainer.api.TrainingSummary.load(path + "/" + SparkTrainerModel.SUMMARY_DIR)
          .precision());
      est.write().overwrite().save(dir.resolve("bf16-est").toString());
      SparkTrainer back = SparkTrainer.load(dir.resolve("bf16-est").toString());
      assertEquals("bf16", back.getPrecision());
      assertEquals(true, back.getCudnnBenchmark());
      assertEquals(false, back.getCudaGraphs());
      assertEquals("auto", back.getAllReduceMode());
      assertEquals(-1, back.getGemmSmCarveout());
      assertEquals("fp32", back.getGradientPrecision());
      assertEquals(false, back.getShardOptimizer());
      est.setGradientPrecision("bf16").setShardOptimizer(true).write().overwrite()
          .save(dir.resolve("bf16-grads-est").toString());
      SparkTrainer backGrads = SparkTrainer.load(dir.resolve("bf16-grads-est").toString());
      assertEquals("bf16", backGrads.getGradientPrecision());
      assertEquals(true, backGrads.getShardOptimizer());
    } finally {
      df.unpersist();
    }
  }

  @Test
  void gradientPrecisionParam() {
    assertEquals("fp32", trainer(1).getGradientPrecision());
    assertEquals("bf16", trainer(1).setGradientPrecision("bf16").getGradientPrecision());
    assertEquals("fp32", trainer(1).setGradientPrecision("bf16").setGradientPrecision("fp32").getGradientPrecision());
    assertEquals("gradientPrecision must be fp32 or bf16, got 'fp16' (bf16: bf16 parameter gradients where the model "
        + "takes the fused linear path on cuda, else fp32)",
        assertThrows(IllegalArgumentException.class, () -> trainer(1).setGradientPrecision("fp16")).getMessage());
    assertThrows(IllegalArgumentException.class, () -> trainer(1).setGradientPrecision("BF16"));
    assertThrows(IllegalArgumentException.class, () -> trainer(1).setGradientPrecision(null));
    // Around the setter (a ParamMap, as fit(df, paramMap) or a loaded estimator do) Spark's validator refuses it.
    SparkTrainer t = trainer(1);
    assertThrows(IllegalArgumentException.class,
        () -> t.copy(new org.apache.spark.ml.param.ParamMap().put(t.gradientPrecision(), "fp16")));
  }

  @Test
  void bf16GradientsWithAccumulationFailBeforeAnySparkJob() {
    Dataset<Row> df = blobs(100, 6);
    String group = "bf16-gradients-accumulation";
    spark.sparkContext().setJobGroup(group, "fit that must fail on the driver", false);
    try {
      IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
          () -> trainer(2).setGradientPrecision("bf16").setAccumulation(2).fit(df));
      assertEquals("gradientPrecision bf16 needs accumulation 1, got accumulation 2 (a bf16 gradient would round the "
          + "micro-batches' sum at every micro-batch): set accumulation to 1 or gradientPrecision to fp32",
          e.getMessage());
      assertEquals(0, spark.sparkContext().statusTracker().getJobIdsForGroup(group).length,
          "the combination must fail before any Spark job (no data pass, no barrier stage)");
    } finally {
      spark.sparkContext().clearJobGroup();
    }
    // Each alone is fine: bf16 gradients with accumulation 1, and accumulation with fp32 gradients.
    assertEquals(1, (int) trainer(2).setGradientPrecision("bf16").trainerConfig().accumulation());
    assertEquals(2, (int) trainer(2).setAccumulation(2).trainerConfig().accumulation());
  }

  @Test
  void jobFileValidationFractionHoldsOutRows() {
    dev.sparktrainer.cli.JobConfig job = dev.sparktrainer.cli.JobConfig.parse("{\"data\": {\"format\": \"parquet\", "
        + "\"path\": \"unused\", \"featureCols\": [\"a\", \"b\", \"c\", \"d\"], \"validationFraction\": 0.25}, "
        + "\"model\": {\"input\": [4], \"layers\": [{\"type\": \"linear\", \"units\": 16}, {\"type\": \"relu\"}, "
        + "{\"type\": \"linear\", \"units\": 3}]}, \"training\": {\"epochs\": 2, \"batchSize\": 32, "
        + "\"numWorkers\": 2, \"device\": \"cpu\", \"seed\": 5, \"precision\": \"bf16\"}}");
    Dataset<Row> train = job.withValidationSplit(blobs(400, 5)).cache();
    try {
      long held = train.filter(train.col(dev.sparktrainer.cli.JobConfig.SPLIT_COL)).count();
      assertTrue(held > 50 && held < 150, held + " of 400 rows held out for a fraction of 0.25");
      SparkTrainerModel m = job.trainer.fit(train);
      assertEquals(2, m.summary().validation().size());
      assertEquals(held, m.summary().validation().get(0).rows());
      assertEquals("bf16", m.summary().precision());
    } finally {
      train.unpersist();
    }
  }
}
