package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Binary columns of uint8 pixels: decoding (CHW, HWC, per-channel statistics) and a fit/transform through Spark. */
@Timeout(300)
class ImageColumnsTest {

  @Test
  void decodesChannelsFirstAndInterleaved() {
    byte[] raw = {0, (byte) 255, 51, (byte) 204, 102, (byte) 153}; // 2 channels x 1 x 3
    ImageColumns.Layout chw = new ImageColumns.Layout(2, 1, 3, false, new float[] {0.5f, 0f},
        new float[] {0.5f, 2f});
    assertArrayEquals(new float[] {-1f, 1f, -0.6f, 0.4f, 0.2f, 0.3f}, ImageColumns.decode(raw, chw), 1e-6f);
    // the same bytes read as (H, W, C) = (1, 3, 2): channel 0 = bytes 0, 2, 4; channel 1 = bytes 1, 3, 5
    ImageColumns.Layout hwc = ImageColumns.Layout.hwc(2, 1, 3, new float[] {0.5f, 0f}, new float[] {0.5f, 2f});
    assertArrayEquals(new float[] {-1f, -0.6f, -0.2f, 0.5f, 0.4f, 0.3f}, ImageColumns.decode(raw, hwc), 1e-6f);
    // a row of another size keeps its length (validation reports it)
    assertEquals(4, ImageColumns.decode(new byte[4], chw).length);
  }

  @Test
  void layoutErrors() {
    assertEquals("image layout: mean needs 1 or 3 values, got [0.5, 0.5]", assertThrows(
        IllegalArgumentException.class, () -> ImageColumns.Layout.hwc(3, 2, 2, new float[] {0.5f, 0.5f},
            new float[] {1f})).getMessage());
    assertEquals("image layout: std must be > 0 and finite, got [0.0]", assertThrows(IllegalArgumentException.class,
        () -> ImageColumns.Layout.chw(1, 2, 2, 0f, 0f)).getMessage());
    assertEquals("image layout: channels, height and width must be > 0, got 0x2x2", assertThrows(
        IllegalArgumentException.class, () -> ImageColumns.Layout.chw(0, 2, 2, 0f, 1f)).getMessage());
  }

  /** 1x6x6 images whose class is which third of the rows is bright. */
  static List<Row> images(int n, long seed) {
    Random r = new Random(seed);
    List<Row> rows = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      int label = r.nextInt(3);
      byte[] px = new byte[36];
      for (int p = 0; p < 36; p++) {
        int row = p / 6;
        px[p] = (byte) (row / 2 == label ? 180 + r.nextInt(60) : r.nextInt(100));
      }
      rows.add(RowFactory.create(px, label));
    }
    return rows;
  }

  @Test
  void cnnTrainsFromABinaryImageColumn() {
    StructType schema = new StructType().add("image", DataTypes.BinaryType).add("label", DataTypes.IntegerType);
    SparkSession spark = SparkTestSession.start("ImageColumnsTest");
    try {
      Dataset<Row> raw = spark.createDataFrame(images(256, 1), schema).repartition(2);
      SparkTrainer trainer = new SparkTrainer().setFeaturesCol("image")
          .setModelSpec(ModelSpec.builder().input(1, 6, 6).conv2d(4, 3, 1, 1).relu().maxPool2d(2, 2, 0).flatten()
              .linear(3).build())
          .setOptimizer(OptimizerConfig.adamw(1e-2)).setNumWorkers(2).setBatchSize(16).setEpochs(3).setSeed(2)
          .setDevice("cpu");
      String m = assertThrows(IllegalArgumentException.class, () -> trainer.fit(raw)).getMessage();
      assertEquals("column 'image' (featuresCol) holds binary data but no pixel layout; describe it first:"
          + " ImageColumns.describe(df, \"image\", ImageColumns.Layout.chw(channels, height, width, mean, std))", m);

      ImageColumns.Layout layout = ImageColumns.Layout.chw(1, 6, 6, 0.3f, 0.3f);
      Dataset<Row> train = ImageColumns.describe(raw, "image", layout);
      SparkTrainerModel model = trainer.fit(train);
      Dataset<Row> test = ImageColumns.describe(spark.createDataFrame(images(200, 2), schema), "image", layout);
      double acc = model.transform(test).filter("prediction = cast(label as double)").count() / 200.0;
      assertTrue(acc >= 0.9, "accuracy " + acc);

      // a layout that does not match the spec is reported by the driver's validation
      Dataset<Row> wrong = ImageColumns.describe(spark.createDataFrame(List.of(RowFactory.create(new byte[30], 0),
          RowFactory.create(new byte[30], 1)), schema), "image", layout);
      String w = assertThrows(IllegalArgumentException.class, () -> trainer.fit(wrong)).getMessage();
      assertTrue(w.contains("has 30 values per row but the model spec's input needs 36"), w);
    } finally {
      spark.stop();
    }
  }
}
