package dev.sparktrainer.spark;

import dev.sparktrainer.data.FashionMnist;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.util.ArrayList;
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
      rows = FashionMnist.rows(dir, split); // the files' headers: the driver reads no pixels
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
      int start = (int) Math.min(rows, first * per);
      int end = Math.min(rows, start + per);
      List<Row> out = new ArrayList<>(Math.max(0, end - start));
      FashionMnist.readRows(Path.of(d), split, start, end, (px, label) -> out.add(RowFactory.create(px, label)));
      return out.iterator();
    };
    return spark.range(0, partitions, 1, partitions).as(Encoders.LONG())
        .mapPartitions(read, Encoders.row(SCHEMA));
  }
}
