package dev.sparktrainer.spark;

import static org.apache.spark.sql.functions.col;

import java.io.Serializable;
import java.util.Arrays;
import org.apache.spark.sql.Column;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.api.java.UDF1;
import org.apache.spark.sql.expressions.UserDefinedFunction;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.Metadata;
import org.apache.spark.sql.types.MetadataBuilder;
import org.apache.spark.sql.types.StructField;

/**
 * Images as raw uint8 pixels in a binary column. The pixel layout and normalisation travel with the
 * DataFrame, in the column's metadata, so fit and transform need no extra settings:
 *
 * <pre>{@code
 * Dataset<Row> df = ImageColumns.describe(raw, "image", ImageColumns.Layout.chw(1, 28, 28, 0.2860f, 0.3530f));
 * new SparkTrainer().setFeaturesCol("image").setModelSpec(ModelZoo.fashionMnistCnn()) ... .fit(df);
 * }</pre>
 *
 * <p>Each row's bytes are decoded in the task (a Spark expression evaluated where the rows are), as
 * torchvision's ToTensor + Normalize: value = (byte / 255 - mean[c]) / std[c], into channels-first
 * (C, H, W) order; bytes stored HWC (interleaved channels, as most image libraries give them) are transposed.
 * A row whose byte count is not C * H * W is passed on unchanged in length (scaled with channel 0's mean/std)
 * so that the driver's validation reports it like any features column of the wrong size.
 */
public final class ImageColumns {
  /** The metadata key that holds the layout. */
  public static final String METADATA_KEY = "sparktrainer.image";

  private ImageColumns() {}

  /**
   * Pixel layout and normalisation of one image column.
   *
   * @param hwc true when bytes are stored (H, W, C), false for (C, H, W)
   * @param mean per-channel mean (one value, or one per channel) of pixels scaled to [0, 1]
   * @param std per-channel standard deviation, > 0
   */
  public record Layout(int channels, int height, int width, boolean hwc, float[] mean, float[] std)
      implements Serializable {
    /** Checks sizes and statistics. */
    public Layout {
      if (channels <= 0 || height <= 0 || width <= 0) {
        throw new IllegalArgumentException("image layout: channels, height and width must be > 0, got " + channels
            + "x" + height + "x" + width);
      }
      mean = perChannel(mean, channels, "mean");
      std = perChannel(std, channels, "std");
      for (float s : std) {
        if (!(s > 0f) || Float.isInfinite(s)) {
          throw new IllegalArgumentException("image layout: std must be > 0 and finite, got " + Arrays.toString(std));
        }
      }
    }

    /** Channels-first bytes, one mean and std for every channel. */
    public static Layout chw(int channels, int height, int width, float mean, float std) {
      return new Layout(channels, height, width, false, new float[] {mean}, new float[] {std});
    }

    /** Bytes stored (H, W, C), e.g. RGB images, with per-channel statistics. */
    public static Layout hwc(int channels, int height, int width, float[] mean, float[] std) {
      return new Layout(channels, height, width, true, mean, std);
    }

    /** Bytes per image. */
    public int size() {
      return channels * height * width;
    }

    private static float[] perChannel(float[] v, int channels, String what) {
      if (v == null || (v.length != 1 && v.length != channels)) {
        throw new IllegalArgumentException("image layout: " + what + " needs 1 or " + channels + " values, got "
            + (v == null ? "none" : Arrays.toString(v)));
      }
      float[] out = new float[channels];
      for (int c = 0; c < channels; c++) {
        out[c] = v.length == 1 ? v[0] : v[c];
        if (!Float.isFinite(out[c])) {
          throw new IllegalArgumentException("image layout: " + what + " must be finite, got " + Arrays.toString(v));
        }
      }
      return out;
    }
  }

  /** df with {@code column}'s metadata describing its images (other metadata is kept). */
  public static Dataset<Row> describe(Dataset<Row> df, String column, Layout layout) {
    StructField f = FeatureColumns.field(df.schema(), column, "column");
    if (!(f.dataType() instanceof org.apache.spark.sql.types.BinaryType)) {
      throw new IllegalArgumentException("column '" + column + "' has type " + f.dataType().simpleString()
          + "; ImageColumns describes binary columns of raw uint8 pixels");
    }
    Metadata m = new MetadataBuilder().withMetadata(f.metadata()).putMetadata(METADATA_KEY, toMetadata(layout))
        .build();
    return df.withColumn(column, col("`" + column.replace("`", "``") + "`").as(column, m));
  }

  static Metadata toMetadata(Layout l) {
    return new MetadataBuilder().putLong("channels", l.channels()).putLong("height", l.height())
        .putLong("width", l.width()).putString("order", l.hwc() ? "hwc" : "chw")
        .putDoubleArray("mean", toDouble(l.mean())).putDoubleArray("std", toDouble(l.std())).build();
  }

  /** The layout in a column's metadata, or null when it has none. */
  static Layout layoutOf(StructField f) {
    if (!f.metadata().contains(METADATA_KEY)) {
      return null;
    }
    Metadata m = f.metadata().getMetadata(METADATA_KEY);
    return new Layout((int) m.getLong("channels"), (int) m.getLong("height"), (int) m.getLong("width"),
        m.getString("order").equals("hwc"), toFloat(m.getDoubleArray("mean")), toFloat(m.getDoubleArray("std")));
  }

  /** array<float> of the decoded, normalised pixels of a described binary column (the FeatureColumns hook). */
  static Column decodeExpr(StructField f, String param) {
    Layout layout = layoutOf(f);
    if (layout == null) {
      throw new IllegalArgumentException("column '" + f.name() + "' (" + param + ") holds binary data but no pixel"
          + " layout; describe it first: ImageColumns.describe(df, \"" + f.name() + "\", ImageColumns.Layout.chw("
          + "channels, height, width, mean, std))");
    }
    UserDefinedFunction udf = functions.udf((UDF1<byte[], float[]>) raw -> raw == null ? null : decode(raw, layout),
        DataTypes.createArrayType(DataTypes.FloatType, false));
    return udf.apply(col("`" + f.name().replace("`", "``") + "`"));
  }

  /** Decodes one image: (byte / 255 - mean[c]) / std[c] in (C, H, W) order. */
  public static float[] decode(byte[] raw, Layout l) {
    float[] out = new float[raw.length];
    if (raw.length != l.size()) {
      for (int i = 0; i < raw.length; i++) {
        out[i] = ((raw[i] & 0xff) / 255f - l.mean()[0]) / l.std()[0];
      }
      return out;
    }
    int plane = l.height() * l.width();
    for (int c = 0; c < l.channels(); c++) {
      float mean = l.mean()[c];
      float std = l.std()[c];
      for (int p = 0; p < plane; p++) {
        int src = l.hwc() ? p * l.channels() + c : c * plane + p;
        out[c * plane + p] = ((raw[src] & 0xff) / 255f - mean) / std;
      }
    }
    return out;
  }

  private static double[] toDouble(float[] a) {
    double[] d = new double[a.length];
    for (int i = 0; i < a.length; i++) {
      d[i] = a[i];
    }
    return d;
  }

  private static float[] toFloat(double[] a) {
    float[] f = new float[a.length];
    for (int i = 0; i < a.length; i++) {
      f[i] = (float) a[i];
    }
    return f;
  }
}
