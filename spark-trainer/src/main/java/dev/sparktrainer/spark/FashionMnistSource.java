package dev.sparktrainer.spark;

import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.data.HeapRowStore;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * Fashion-MNIST as a DataFrame {@code (features: array<float>[784], label: int)}, read by the executors
 * from the IDX files (each partition reads its slice of rows), so the driver never holds the pixels. The
 * folder must be readable on every executor (local mode: this machine).
 */
public final class FashionMnistSource {
  /** The schema of the DataFrame. */
  public static final StructType SCHEMA = new StructType()
      .add("features", DataTypes.createArrayType(DataTypes.FloatType, false), false)
      .add("label", DataTypes.IntegerType, false);

  private FashionMnistSource() {}

  /** The "train" (60,000 rows) or "t10k" (10,000 rows) split in {@code partitions} partitions. */
  public static Dataset<Row> load(SparkSession spark, Path dir, String split, int partitions) {
    int rows;
    try {
      rows = FashionMnist.load(dir, split).rows();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    String d = dir.toString();
    int per = (rows + partitions - 1) / partitions;
    MapPartitionsFunction<Long, Row> read = it -> {
      if (!it.hasNext()) {
        return java.util.Collections.emptyIterator();
      }
      long first = it.next();
      HeapRowStore s = FashionMnist.load(Path.of(d), split);
      int start = (int) first * per;
      int end = Math.min(s.rows(), start + per);
      List<Row> out = new ArrayList<>(Math.max(0, end - start));
      float[] f = s.features();
      for (int r = start; r < end; r++) {
        out.add(RowFactory.create(Arrays.copyOfRange(f, r * 784, (r + 1) * 784), s.labels()[r]));
      }
      return out.iterator();
    };
    return spark.range(0, partitions, 1, partitions).as(Encoders.LONG())
        .mapPartitions(read, Encoders.row(SCHEMA));
  }
}
