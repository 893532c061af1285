package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.nn.ModelSpec;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Invariant 7: bad input fails on the driver before the barrier stage, with a message that says what to fix.
 * A listener records every submitted stage, so each test also checks that no barrier stage ever started.
 */
@Timeout(120)
class InputValidationTest {
  static SparkSession spark;
  static final List<String> barrierStages = java.util.Collections.synchronizedList(new ArrayList<>());

  @BeforeAll
  static void start() {
    spark = SparkTestSession.start("InputValidationTest");
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
    spark.stop();
  }

  @BeforeEach
  void clear() {
    barrierStages.clear();
  }

  static final StructType ARRAY_SCHEMA = new StructType()
      .add("features", DataTypes.createArrayType(DataTypes.FloatType), true)
      .add("label", DataTypes.DoubleType, true);

  static Dataset<Row> df(Object[]... rows) {
    List<Row> list = new ArrayList<>();
    for (Object[] r : rows) {
      list.add(RowFactory.create(r));
    }
    return spark.createDataFrame(list, ARRAY_SCHEMA);
  }

  static Object[] row(double label, float... f) {
    return new Object[] {f, label};
  }

  static SparkTrainer trainer() {
    return new SparkTrainer().setModelSpec(ModelSpec.builder().input(3).linear(2).build())
        .setBatchSize(2).setNumWorkers(2).setDevice("cpu").setEpochs(1);
  }

  String fails(SparkTrainer t, Dataset<Row> data) {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> t.fit(data));
    try {
      spark.sparkContext().listenerBus().waitUntilEmpty();
    } catch (java.util.concurrent.TimeoutException te) {
      throw new AssertionError("listener bus did not drain", te);
    }
    assertTrue(barrierStages.isEmpty(), "a barrier stage started: " + barrierStages);
    return e.getMessage();
  }

  Dataset<Row> good() {
    return df(row(0, 1, 2, 3), row(1, 4, 5, 6), row(0, 7, 8, 9), row(1, 1, 1, 1));
  }

  @Test
  void nullFeatures() {
    assertEquals("features column 'features' has 1 null row(s); drop them (df.na().drop()) or fill them before fit",
        fails(trainer(), df(row(0, 1, 2, 3), new Object[] {null, 1.0})));
  }

  @Test
  void nullLabel() {
    assertEquals("label column 'label' has 1 null row(s); drop them or fill them before fit",
        fails(trainer(), df(row(0, 1, 2, 3), new Object[] {new float[] {1, 2, 3}, null})));
  }

  @Test
  void vectorsOfDifferentSizes() {
    assertEquals("features column 'features' has vectors of different sizes (2 to 3); every row needs exactly 3 "
        + "values (the model's input)", fails(trainer(), df(row(0, 1, 2, 3), row(1, 1, 2))));
  }

  @Test
  void wrongVectorSize() {
    assertEquals("features column 'features' has 4 values per row but the model spec's input needs 3; fix the "
        + "spec's 'input' or the features", fails(trainer(), df(row(0, 1, 2, 3, 4), row(1, 1, 2, 3, 4))));
  }

  @Test
  void nanFeatures() {
    assertEquals("features column 'features' has 1 row(s) with NaN or infinite values; remove or replace them "
        + "before fit", fails(trainer(), df(row(0, 1, Float.NaN, 3), row(1, 1, 2, 3))));
  }

  @Test
  void infiniteFeatures() {
    assertEquals("features column 'features' has 2 row(s) with NaN or infinite values; remove or replace them "
        + "before fit", fails(trainer(), df(row(0, 1, Float.POSITIVE_INFINITY, 3),
            row(1, Float.NEGATIVE_INFINITY, 2, 3))));
  }

  @Test
  void labelOutOfRange() {
    assertEquals("label column 'label' has values in [0, 2] but the model has 2 outputs, so labels must be in "
        + "[0, 2); re-index the labels or change the last layer's units",
        fails(trainer(), df(row(0, 1, 2, 3), row(2, 1, 2, 3))));
  }

  @Test
  void negativeLabel() {
    assertEquals("label column 'label' has values in [-1, 1] but the model has 2 outputs, so labels must be in "
        + "[0, 2); re-index the labels or change the last layer's units",
        fails(trainer(), df(row(-1, 1, 2, 3), row(1, 1, 2, 3))));
  }

  @Test
  void fractionalLabel() {
    assertEquals("label column 'label' has 1 value(s) that are not whole numbers; cross_entropy needs class "
        + "indices 0..1", fails(trainer(), df(row(0.5, 1, 2, 3), row(1, 1, 2, 3))));
  }

  @Test
  void nonNumericColumn() {
    Dataset<Row> d = good().withColumn("features", org.apache.spark.sql.functions.lit("x"));
    assertEquals("column 'features' (featuresCol) has type string; it must be a Spark ML vector, an array of "
        + "numbers, or a number (use VectorAssembler or setFeatureCols for several columns)", fails(trainer(), d));
  }

  @Test
  void nonNumericLabel() {
    Dataset<Row> d = good().withColumn("label", org.apache.spark.sql.functions.lit("cat"));
    assertEquals("label column 'label' has type string; it must hold numeric class indices 0..classes-1 (use "
        + "StringIndexer to index string labels)", fails(trainer(), d));
  }

  @Test
  void missingColumn() {
    assertEquals("column 'pixels' (featuresCol) is not in the DataFrame; its columns are [features, label]. Set "
        + "featuresCol to one of them", fails(trainer().setFeaturesCol("pixels"), good()));
  }

  @Test
  void emptyDataFrame() {
    assertEquals("the training DataFrame is empty; fit needs at least one row",
        fails(trainer(), good().filter("label > 5")));
  }

  @Test
  void fewerRowsThanGlobalBatchWithDropLast() {
    assertEquals("only 4 rows but one global batch needs 6 (workers 2 x batch 3) with dropLast; lower the batch "
        + "size or the number of workers, or turn dropLast off",
        fails(trainer().setBatchSize(3).setDropLast(true), good()));
  }

  @Test
  void moreWorkersThanSlots() {
    String m = fails(trainer().setNumWorkers(5), good());
    assertEquals("numWorkers is 5 but this Spark application has only 4 task slot(s) (master local[4]); a barrier "
        + "stage needs all 5 tasks running at once. Lower numWorkers to <= 4 or add executors/cores (GPU clusters: "
        + "one slot per GPU, see spark.executor.resource.gpu.amount and spark.task.resource.gpu.amount)", m);
  }

  @Test
  void batchSizeZero() {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> trainer().setBatchSize(0));
    assertTrue(e.getMessage().contains("batchSize given invalid value 0"), e.getMessage());
  }

  @Test
  void missingModelSpec() {
    SparkTrainer t = new SparkTrainer().setDevice("cpu");
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> t.fit(good()));
    assertEquals("modelSpec is not set: call setModelSpec(ModelSpec.mlp(...)) or setModelSpec(json) before fit",
        e.getMessage());
  }

  @Test
  void badModelSpecJson() {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> trainer().setModelSpec("{\"input\": [3], \"layers\": [{\"type\": \"conv\"}]}"));
    assertEquals("model spec: layers[0]: unknown layer type 'conv' (known: linear, relu, gelu, dropout, flatten,"
        + " conv2d, batchnorm2d, maxpool2d, avgpool2d, globalavgpool, residual)", e.getMessage());
  }

  @Test
  void goodInputPassesValidation() {
    // The same trainer on clean data gets past validation (W=1 to keep it quick).
    assertEquals(1, trainer().setNumWorkers(1).fit(good()).summary().epochs().size());
    assertTrue(Arrays.asList(good().columns()).contains("label"));
  }
}
