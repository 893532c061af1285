package dev.sparktrainer.cli;

import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.api.TrainingSummary;
import dev.sparktrainer.spark.FashionMnistSource;
import java.nio.file.Path;
import java.util.Locale;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;

/**
 * The spark-submit application: {@code spark-submit --class dev.sparktrainer.cli.SparkTrainApp
 * spark-trainer.jar --config conf/fashion-mnist.json}. Trains on the DataFrame the job file names, prints the
 * per-epoch summary, saves the model when asked, evaluates on the test data when given, and prints
 * {@code test accuracy: 0.xxxx} last. {@code --master URL} sets the master when not run by spark-submit;
 * {@code --cache} caches (and materialises) the training DataFrame before fit, as an ETL job would;
 * {@code --summary DIR} writes the training summary (JSON, CSV, PNG chart) to DIR. A validation set named in
 * the job file (data.validationPath, validationFraction or validationIndicatorCol) is evaluated after every
 * epoch and shows in the summary. While training runs, the
 * driver shows live progress (a bar on a terminal, log lines otherwise; Spark conf spark.sparktrainer.progress).
 */
public final class SparkTrainApp {
  private SparkTrainApp() {}

  public static void main(String[] args) throws Exception {
    String config = null;
    String master = null;
    boolean cache = false;
    String summaryDir = null;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--config" -> config = value(args, ++i, "--config");
        case "--master" -> master = value(args, ++i, "--master");
        case "--cache" -> cache = true;
        case "--summary" -> summaryDir = value(args, ++i, "--summary");
        default -> throw new IllegalArgumentException("unknown option " + args[i] + " (known: --config FILE, "
            + "--master URL, --cache, --summary DIR)");
      }
    }
    if (config == null) {
      throw new IllegalArgumentException("--config FILE is required (see conf/fashion-mnist.json)");
    }
    JobConfig job = JobConfig.load(Path.of(config));
    SparkSession.Builder b = SparkSession.builder().appName("spark-trainer");
    if (master != null) {
      b.master(master);
    }
    SparkSession spark = b.getOrCreate();
    try {
      Dataset<Row> train;
      Dataset<Row> test = null;
      Dataset<Row> validation = null;
      if (job.format.equals("fashion-mnist")) {
        int parts = Math.max(2, spark.sparkContext().defaultParallelism());
        train = FashionMnistSource.load(spark, Path.of(job.path), "train", parts);
        test = FashionMnistSource.load(spark, Path.of(job.path), "t10k", parts);
      } else {
        train = read(spark, job.format, job.path);
        if (job.testPath != null) {
          test = read(spark, job.format, job.testPath);
        }
        if (job.validationPath != null) {
          validation = read(spark, job.format, job.validationPath);
        }
      }
      train = job.withValidationSplit(train); // data.validationFraction: before caching, so the split is drawn once
      if (cache) {
        long t0 = System.nanoTime();
        long n = train.cache().count();
        System.out.printf(Locale.ROOT, "cached %d training rows in %.2f s%n", n, (System.nanoTime() - t0) / 1e9);
      }
      SparkTrainerModel model = job.trainer.fit(train, validation);
      TrainingSummary s = model.summary();
      System.out.println(s);
      if (job.modelPath != null) {
        model.write().overwrite().save(job.modelPath);
        System.out.println("model saved to " + job.modelPath + " (training summary in " + job.modelPath + "/"
            + SparkTrainerModel.SUMMARY_DIR + ")");
      }
      if (summaryDir != null) {
        System.out.println("training summary written to " + summaryDir + ": " + String.join(", ", s.save(summaryDir)));
      }
      if (test != null) {
        Dataset<Row> pred = model.transform(test);
        String label = job.trainer.getLabelCol();
        long n = pred.count();
        long right = pred.filter(pred.col("prediction").equalTo(pred.col(label).cast("double"))).count();
        System.out.printf(Locale.ROOT, "test accuracy: %.4f%n", right / (double) n);
      }
    } finally {
      spark.stop();
    }
  }

  private static Dataset<Row> read(SparkSession spark, String format, String path) {
    return format.equals("csv") ? spark.read().option("header", "true").option("inferSchema", "true").csv(path)
        : spark.read().parquet(path);
  }

  private static String value(String[] args, int i, String opt) {
    if (i >= args.length) {
      throw new IllegalArgumentException(opt + " needs a value");
    }
    return args[i];
  }
}
