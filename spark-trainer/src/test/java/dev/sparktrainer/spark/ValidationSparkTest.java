package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.api.TrainingSummary;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.functions;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Issue 9: a validation set (fit(train, validation) or setValidationIndicatorCol) is evaluated inside the
 * training stage after every epoch, W = 2; its figures reach the summary and the live progress, equal an
 * independent evaluation of the final model, and leave training untouched. Bad validation input fails on
 * the driver before the barrier stage.
 */
@Timeout(300)
class ValidationSparkTest {
  static SparkSession spark;
  static final List<String> barrierStages = java.util.Collections.synchronizedList(new ArrayList<>());

  @BeforeAll
  static void start() {
    spark = SparkTestSession.start("ValidationSparkTest");
    SparkTrainerTest.spark = spark;
    spark.sparkContext().addSparkListener(new SparkListener() {
      @Override
      public void onStageSubmitted(SparkListenerStageSubmitted e) {
        if (e.stageInfo().rddInfos().exists(r -> r.isBarrier())) {
          barrierStages.add(e.stageInfo().name());
        }
      }
    });
  }

  @AfterAll
  static void stop() {
    ProgressServer.testListener = null;
    spark.stop();
  }

  /** Loss and accuracy of the model on the rows, computed here in double from the logits of one forward pass. */
  static double[] evaluate(SparkTrainerModel m, List<Row> rows) {
    try (CpuDevice d = new CpuDevice()) {
      Model model = new Model(m.spec(), d);
      model.loadParameters(m.parameters());
      int n = rows.size();
      float[] x = new float[n * 4];
      for (int i = 0; i < n; i++) {
        for (int j = 0; j < 4; j++) {
          x[i * 4 + j] = (float) rows.get(i).getDouble(j);
        }
      }
      Tensor xt = d.allocate(DType.FLOAT32, n, 4);
      d.upload(x, 0, xt);
      Tensor out = model.forward(xt, new Layer.Context(false, 0, 0));
      float[] logits = new float[n * 3];
      d.download(out, logits, 0);
      double loss = 0;
      int right = 0;
      for (int i = 0; i < n; i++) {
        int label = (int) rows.get(i).getDouble(4);
        double max = Double.NEGATIVE_INFINITY;
        int arg = 0;
        for (int c = 0; c < 3; c++) {
          if (logits[i * 3 + c] > max) {
            max = logits[i * 3 + c];
            arg = c;
          }
        }
        double sum = 0;
        for (int c = 0; c < 3; c++) {
          sum += Math.exp(logits[i * 3 + c] - max);
        }
        loss += max + Math.log(sum) - logits[i * 3 + label];
        right += arg == label ? 1 : 0;
      }
      return new double[] {loss / n, right / (double) n};
    }
  }

  @Test
  void validationFiguresPerEpochMatchAnIndependentEvaluationAndLeaveTrainingUnchanged() {
    Dataset<Row> train = SparkTrainerTest.blobs(600, 1).cache();
    Dataset<Row> validation = SparkTrainerTest.blobs(250, 2).repartition(3).cache(); // 250: 125 rows per rank
    List<ProgressEvent> events = new ArrayList<>();
    ProgressServer.testListener = events::add; // the server calls it one event at a time
    spark.sparkContext().setLocalProperty(ProgressPrinter.CONF, "log");
    SparkTrainerModel model;
    try {
      model = SparkTrainerTest.trainer(2).setEpochs(4).fit(train, validation);
    } finally {
      ProgressServer.testListener = null;
      spark.sparkContext().setLocalProperty(ProgressPrinter.CONF, null);
    }
    TrainingSummary s = model.summary();
    List<TrainingSummary.Validation> v = s.validation();
    assertEquals(4, v.size(), "one validation per epoch: " + v);
    for (int e = 0; e < 4; e++) {
      assertEquals(e, v.get(e).epoch());
      assertEquals(250, v.get(e).rows());
      assertTrue(Double.isFinite(v.get(e).loss()) && v.get(e).loss() > 0, v.get(e).toString());
      TrainingSummary.Epoch epoch = s.epochs().get(e);
      assertTrue(epoch.hasValidation());
      assertEquals(v.get(e).loss(), epoch.validationLoss());
      assertEquals(v.get(e).accuracy(), epoch.validationAccuracy());
    }
    assertTrue(v.get(3).loss() < v.get(0).loss(), "the validation loss falls while training: " + v);

    double[] independent = evaluate(model, validation.collectAsList());
    TrainingSummary.Validation last = v.get(3);
    System.out.println("ValidationSparkTest:\n" + s + "\nindependent evaluation of the final model: loss "
        + independent[0] + ", accuracy " + independent[1] + "; last epoch in the summary: " + last);
    assertEquals(independent[0], last.loss(), 1e-6 * independent[0], "validation loss of the last epoch");
    assertEquals(independent[1], last.accuracy(), 1e-6 * independent[1], "validation accuracy of the last epoch");

    // Live: rank 0 reports each epoch's figures as soon as the ranks have them; the other ranks send none.
    List<ProgressEvent.Validation> live = new ArrayList<>();
    for (ProgressEvent e : events) {
      if (e instanceof ProgressEvent.Validation pv) {
        live.add(pv);
      }
    }
    assertEquals(4, live.size(), "live validation events: " + live);
    for (int e = 0; e < 4; e++) {
      ProgressEvent.Validation pv = live.get(e);
      assertEquals(0, pv.rank());
      assertEquals(v.get(e), new TrainingSummary.Validation(pv.epoch(), pv.rows(), pv.loss(), pv.accuracy()));
    }

    // The summary's JSON carries the figures.
    assertEquals(v, TrainingSummary.fromJson(s.toJson()).validation());

    // Evaluating does not change training: the same fit without validation ends with the same bits.
    SparkTrainerModel plain = SparkTrainerTest.trainer(2).setEpochs(4).fit(train);
    assertArrayEquals(plain.parameters(), model.parameters());
    assertTrue(plain.summary().validation().isEmpty());
    assertFalse(plain.summary().epochs().get(0).hasValidation());
  }

  @Test
  void batchNormModelsAreValidatedWithRankZerosStatistics() {
    // Batch norm's running statistics are per rank (Note [buffers]); the figures must be those of the model the
    // fit returns, which carries rank 0's. Rank 1 sees other rows, so its own statistics would give other figures.
    ModelSpec spec = ModelSpec.builder().input(1, 2, 2).conv2d(ModelSpec.Conv.of(4, 1, 1, 0), false)
        .batchNorm2d().relu().flatten().linear(3).build();
    Dataset<Row> train = SparkTrainerTest.blobs(400, 6).cache();
    Dataset<Row> validation = SparkTrainerTest.blobs(101, 7).cache();
    SparkTrainerModel model = SparkTrainerTest.trainer(2).setModelSpec(spec).setEpochs(2).fit(train, validation);
    double[] independent = evaluate(model, validation.collectAsList());
    TrainingSummary.Validation last = model.summary().validation().get(1);
    assertEquals(101, last.rows());
    assertEquals(independent[0], last.loss(), 1e-6 * independent[0], "validation loss of the last epoch");
    assertEquals(independent[1], last.accuracy(), 1e-6 * independent[1], "validation accuracy of the last epoch");
    // Each rank put its own statistics back after the evaluation: training is unchanged.
    assertArrayEquals(SparkTrainerTest.trainer(2).setModelSpec(spec).setEpochs(2).fit(train).parameters(),
        model.parameters());
  }

  @Test
  void theIndicatorColumnSplitsOneDataFrame() {
    Dataset<Row> all = SparkTrainerTest.blobs(700, 3)
        .withColumn("isVal", functions.pmod(functions.hash(functions.col("a")), functions.lit(7)).equalTo(0)).cache();
    SparkTrainerModel byIndicator = SparkTrainerTest.trainer(2).setEpochs(2).setValidationIndicatorCol("isVal")
        .fit(all);
    SparkTrainerModel byTwo = SparkTrainerTest.trainer(2).setEpochs(2)
        .fit(all.filter("not isVal"), all.filter("isVal"));
    long validationRows = all.filter("isVal").count();
    assertTrue(validationRows > 50 && validationRows < 150, "about 1 row in 7: " + validationRows);
    List<TrainingSummary.Validation> v = byIndicator.summary().validation();
    assertEquals(2, v.size());
    assertEquals(validationRows, v.get(1).rows());
    assertEquals(byTwo.summary().validation(), v);
    assertArrayEquals(byTwo.parameters(), byIndicator.parameters(), "trained on the same rows");
    // Only the other rows are trained on: W*B = 64 rows per step, the last step padded.
    long steps = (700 - validationRows + 63) / 64;
    assertEquals(steps * 32, byIndicator.summary().perRank().get(0).get(0).samples());
  }

  String fails(SparkTrainer t, Dataset<Row> train, Dataset<Row> validation) {
    barrierStages.clear();
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> t.fit(train, validation));
    try {
      spark.sparkContext().listenerBus().waitUntilEmpty();
    } catch (java.util.concurrent.TimeoutException te) {
      throw new AssertionError("listener bus did not drain", te);
    }
    assertTrue(barrierStages.isEmpty(), "a barrier stage started: " + barrierStages);
    return e.getMessage();
  }

  @Test
  void badValidationInputFailsBeforeTheBarrierStage() {
    Dataset<Row> train = SparkTrainerTest.blobs(120, 4);
    Dataset<Row> good = SparkTrainerTest.blobs(30, 5);
    SparkTrainer t = SparkTrainerTest.trainer(2).setEpochs(1);
    assertEquals("the validation DataFrame: features column 'a,b,c,d' has 1 row(s) with NaN or infinite values; "
        + "remove or replace them before fit", fails(t, train, good.withColumn("c",
            functions.when(functions.col("a").equalTo(good.first().getDouble(0)), Double.NaN)
                .otherwise(functions.col("c")))));
    assertEquals("the validation DataFrame: label column 'label' has values in [0, 7] but the model has 3 outputs, "
        + "so labels must be in [0, 3); re-index the labels or change the last layer's units",
        fails(t, train, good.withColumn("label", functions.when(functions.col("label").equalTo(2), 7.0)
            .otherwise(functions.col("label")))));
    assertTrue(fails(t, train, good.drop("d")).startsWith("the validation DataFrame: column 'd'"));
    assertEquals("the validation DataFrame is empty; fit needs at least one row there (or no validation set)",
        fails(t, train, good.filter("label > 5")));
    assertTrue(fails(t.copy(new org.apache.spark.ml.param.ParamMap()).setValidationIndicatorCol("isVal"), train,
        good).startsWith("both a validation DataFrame and validationIndicatorCol 'isVal' are given"));
    assertEquals("validationIndicatorCol 'isVal' is not in the DataFrame; its columns are [a, b, c, d, label]",
        fails(t.copy(new org.apache.spark.ml.param.ParamMap()).setValidationIndicatorCol("isVal"), train, null));
    assertTrue(fails(t.copy(new org.apache.spark.ml.param.ParamMap()).setValidationIndicatorCol("label"), train, null)
        .startsWith("validationIndicatorCol 'label' has type double; it must be boolean"));
    assertEquals("the validation part (rows with validationIndicatorCol 'isVal' true) is empty; fit needs at least "
        + "one row there (or no validation set)", fails(t.copy(new org.apache.spark.ml.param.ParamMap())
            .setValidationIndicatorCol("isVal"), train.withColumn("isVal", functions.lit(false)), null));
  }
}
