package dev.sparktrainer.api;

import java.io.IOException;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.SparkSession;

/**
 * Writes and reads a {@link TrainingSummary} as files in a folder (any Hadoop path: local, HDFS, S3, ...):
 * {@value #JSON} (everything, parsed back by {@link #read}), {@value #EPOCHS_CSV}, {@value #RANKS_CSV} and the
 * chart {@value #CHART}. Driver only.
 *
 * <p>The chart needs XChart and AWT on the driver; when either is missing (a thin jar submitted without its
 * dependencies, a JRE without java.desktop) the other files are still written and the reason is logged.
 */
public final class SummaryFiles {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(SummaryFiles.class);
  public static final String JSON = "summary.json";
  public static final String EPOCHS_CSV = "epochs.csv";
  public static final String RANKS_CSV = "ranks.csv";
  public static final String CHART = "curves.png";

  private SummaryFiles() {}

  /** Writes the files into {@code dir} (created when missing, files replaced); returns the names written. */
  public static List<String> write(TrainingSummary s, String dir, Configuration conf) {
    List<String> written = new ArrayList<>();
    try {
      Path d = new Path(dir);
      FileSystem fs = d.getFileSystem(conf);
      fs.mkdirs(d);
      put(fs, new Path(d, JSON), s.toJson().getBytes(StandardCharsets.UTF_8));
      written.add(JSON);
      put(fs, new Path(d, EPOCHS_CSV), s.epochsCsv().getBytes(StandardCharsets.UTF_8));
      written.add(EPOCHS_CSV);
      put(fs, new Path(d, RANKS_CSV), s.ranksCsv().getBytes(StandardCharsets.UTF_8));
      written.add(RANKS_CSV);
      byte[] png = chart(s);
      if (png != null) {
        put(fs, new Path(d, CHART), png);
        written.add(CHART);
      }
    } catch (IOException e) {
      throw new UncheckedIOException("could not write the training summary to " + dir, e);
    }
    return written;
  }

  /** The PNG, or null (logged) when XChart or AWT is not usable in this JVM. */
  static byte[] chart(TrainingSummary s) throws IOException {
    try {
      return SummaryChart.png(s);
    } catch (NoClassDefFoundError | UnsatisfiedLinkError | java.awt.AWTError | InternalError e) {
      LOG.warn("training summary: " + CHART + " not written (" + e + "); the chart needs org.knowm.xchart:xchart "
          + "on the driver's classpath (spark-submit --packages org.knowm.xchart:xchart:3.8.8) and a JVM with the "
          + "java.desktop module; the JSON and CSV files are written");
      return null;
    }
  }

  /** Reads {@value #JSON} from {@code dir}. */
  public static TrainingSummary read(String dir, Configuration conf) {
    Path p = new Path(dir, JSON);
    try {
      FileSystem fs = p.getFileSystem(conf);
      if (!fs.exists(p)) {
        throw new IllegalArgumentException("no training summary at " + p + " (a model saved from a fit has one "
            + "under <model path>/summary; a model loaded and saved again has none)");
      }
      try (FSDataInputStream in = fs.open(p)) {
        return TrainingSummary.fromJson(new String(in.readAllBytes(), StandardCharsets.UTF_8));
      }
    } catch (IOException e) {
      throw new UncheckedIOException("could not read the training summary " + p, e);
    }
  }

  /** The active Spark session's Hadoop configuration, or a default one outside Spark. */
  static Configuration hadoopConf() {
    scala.Option<SparkSession> active = SparkSession.getActiveSession();
    if (active.isEmpty()) {
      active = SparkSession.getDefaultSession();
    }
    return active.isDefined() ? active.get().sparkContext().hadoopConfiguration() : new Configuration();
  }

  private static void put(FileSystem fs, Path p, byte[] bytes) throws IOException {
    try (OutputStream out = fs.create(p, true)) {
      out.write(bytes);
    }
  }
}
