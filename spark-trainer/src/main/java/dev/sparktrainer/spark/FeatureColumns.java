package dev.sparktrainer.spark;

import static org.apache.spark.sql.functions.array;
import static org.apache.spark.sql.functions.col;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.ml.linalg.VectorUDT;
import org.apache.spark.sql.Column;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.NumericType;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/**
 * Turns the user's feature and label columns into the one form the tasks read: {@code features:
 * array<float>} and {@code label: int} (classification) or {@code target: array<float>} (regression). Schema
 * problems (missing column, non-numeric type) are reported here, on the driver, with the fix.
 */
public final class FeatureColumns {
  /** Name of the prepared features column. */
  public static final String FEATURES = "features";
  /** Name of the prepared label column (class index, int). */
  public static final String LABEL = "label";
  /** Name of the prepared regression target column (array<float>). */
  public static final String TARGET = "target";

  private FeatureColumns() {}

  /** An array<float> expression for the features, from one column or several numeric ones. */
  public static Column featuresExpr(StructType schema, String featuresCol, String[] featureCols) {
    if (featureCols != null && featureCols.length > 0) {
      List<Column> cols = new ArrayList<>();
      for (String c : featureCols) {
        DataType t = field(schema, c, "featureCols").dataType();
        if (!(t instanceof NumericType)) {
          throw new IllegalArgumentException("feature column '" + c + "' has type " + t.simpleString()
              + "; featureCols must all be numeric (cast it, or encode it first, e.g. with StringIndexer)");
        }
        cols.add(col(quote(c)));
      }
      return array(cols.toArray(new Column[0])).cast(DataTypes.createArrayType(DataTypes.FloatType));
    }
    return toFloatArray(schema, featuresCol, "featuresCol");
  }

  /**
   * array<float> from a vector, an array of numbers, a single number, or a binary column of uint8 pixels
   * described by {@link ImageColumns#describe} (decoded and normalised in the task).
   */
  static Column toFloatArray(StructType schema, String name, String param) {
    DataType t = field(schema, name, param).dataType();
    Column c = col(quote(name));
    if (t instanceof org.apache.spark.sql.types.BinaryType) {
      return ImageColumns.decodeExpr(field(schema, name, param), param);
    }
    if (t instanceof VectorUDT) {
      return org.apache.spark.ml.functions.vector_to_array(c, "float32");
    }
    if (t instanceof ArrayType at && at.elementType() instanceof NumericType) {
      return c.cast(DataTypes.createArrayType(DataTypes.FloatType));
    }
    if (t instanceof NumericType) {
      return array(c).cast(DataTypes.createArrayType(DataTypes.FloatType));
    }
    throw new IllegalArgumentException("column '" + name + "' (" + param + ") has type " + t.simpleString()
        + "; it must be a Spark ML vector, an array of numbers, or a number (use VectorAssembler or "
        + "setFeatureCols for several columns)");
  }

  /** The label column as a double (validated as an integer class index later) for cross-entropy. */
  public static Column labelExpr(StructType schema, String labelCol) {
    DataType t = field(schema, labelCol, "labelCol").dataType();
    if (!(t instanceof NumericType)) {
      throw new IllegalArgumentException("label column '" + labelCol + "' has type " + t.simpleString()
          + "; it must hold numeric class indices 0..classes-1 (use StringIndexer to index string labels)");
    }
    return col(quote(labelCol)).cast(DataTypes.DoubleType);
  }

  /** The regression target as array<float>. */
  public static Column targetExpr(StructType schema, String labelCol) {
    return toFloatArray(schema, labelCol, "labelCol");
  }

  static StructField field(StructType schema, String name, String param) {
    for (StructField f : schema.fields()) {
      if (f.name().equals(name)) {
        return f;
      }
    }
    throw new IllegalArgumentException("column '" + name + "' (" + param + ") is not in the DataFrame; its "
        + "columns are " + Arrays.toString(schema.fieldNames()) + ". Set " + param + " to one of them");
  }

  private static String quote(String name) {
    return "`" + name.replace("`", "``") + "`";
  }
}
