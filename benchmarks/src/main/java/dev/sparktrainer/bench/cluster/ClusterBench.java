package dev.sparktrainer.bench.cluster;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.api.SparkTrainerModel;
import dev.sparktrainer.api.TrainingSummary;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import scala.Option;

/**
 * The benchmark suite for clusters: trains each benchmark at each world size W through the public Spark
 * estimator ({@link SparkTrainer#fit}) on synthetic data that the executors generate, reads throughput from
 * the {@link TrainingSummary}, and writes {@code <out>/<date>-<label>-<n>.json} (the results format of
 * benchmarks/README.md), {@code .md} and {@code .png} beside it.
 *
 * <pre>
 * spark-submit --class dev.sparktrainer.bench.cluster.ClusterBench --jars $DEPS benchmarks.jar \
 *     --benches mlp,small-cnn,resnet50 --world 1,2,4 --device cuda --scale full --out /shared/bench-results
 * java ... dev.sparktrainer.bench.cluster.ClusterBench --master 'local[2]' --scale tiny --device cpu --world 1,2
 * </pre>
 *
 * Without {@code --master} it uses the running session (Databricks, notebooks) or the master spark-submit set.
 * A fit that fails is recorded with its error (no figure) and the suite goes on; {@link #main} then throws
 * after the report is written, so a job that ran it fails visibly. See docs/cluster-benchmarks.md.
 */
public final class ClusterBench {
  private ClusterBench() {}

  /** What a run produced: the entries and the files they went to. */
  public record Result(List<Map<String, Object>> entries, BenchReport.Files files) {
    /** Entries whose fit failed. */
    public List<Map<String, Object>> failures() {
      return entries.stream().filter(e -> e.get("error") != null).toList();
    }
  }

  public static void main(String[] args) {
    BenchOptions o;
    try {
      o = BenchOptions.parse(args);
    } catch (IllegalArgumentException e) {
      throw new IllegalArgumentException("ClusterBench: " + e.getMessage() + "\n" + BenchOptions.USAGE, e);
    }
    if (o.help()) {
      System.out.println(BenchOptions.USAGE);
      return;
    }
    Result r = run(o);
    System.out.println("[cluster-bench] report: " + r.files().json() + ", " + r.files().markdown()
        + (r.files().png() != null ? ", " + r.files().png() : " (no PNG chart: see the message above)"));
    if (!r.failures().isEmpty()) {
      StringBuilder b = new StringBuilder();
      for (Map<String, Object> e : r.failures()) {
        b.append("\n  ").append(e.get("benchmark")).append(" W=").append(e.get("world")).append(": ")
            .append(e.get("error"));
      }
      throw new IllegalStateException(r.failures().size() + " of " + r.entries().size()
          + " benchmark runs failed (the report lists them: " + r.files().markdown() + "):" + b);
    }
  }

  /** Runs the suite and writes the report. */
  public static Result run(BenchOptions o) {
    Session session = open(o);
    SparkSession spark = session.spark();
    try {
      ClusterInfo info = ClusterInfo.probe(spark, !o.device().equals("cpu"));
      String label = o.label() != null ? o.label() : info.label(o.device());
      BenchReport.Context c = new BenchReport.Context(LocalDate.now().toString(), label,
          ClusterInfo.commit(o.commit()), info, o);
      String card = info.card(o.device().equals("cpu") ? "cpu" : "cuda");
      log("master %s (Spark %s): %d executor(s), %d task slots, card %s; label %s, commit %s", info.master(),
          info.sparkVersion(), info.executors(), info.taskSlots(), card, label, c.commit());
      BenchReport.Target target = BenchReport.reserve(c, o.out(), spark.sparkContext().hadoopConfiguration());
      List<Map<String, Object>> entries = new ArrayList<>();
      for (String name : o.benches()) {
        Workload w = Workload.of(name, o.scale(), o.batch(), o.rowsPerWorker());
        for (int world : o.worlds()) {
          entries.add(runOne(spark, c, w, world));
          BenchReport.addScaling(entries);
          target.write(entries, false); // after every fit: a run cut short keeps what it measured
        }
      }
      return new Result(entries, target.write(entries, true));
    } finally {
      if (session.own()) {
        spark.stop();
      }
    }
  }

  /** One fit: data generated and cached on the executors, trained, summarized; a failure becomes an entry. */
  static Map<String, Object> runOne(SparkSession spark, BenchReport.Context c, Workload w, int world) {
    BenchOptions o = c.options();
    long rows = w.rowsPerWorker() * world;
    int partitions = Math.max(world, spark.sparkContext().defaultParallelism());
    String what = String.format(Locale.ROOT, "%s W=%d (%s, batch %d per worker, %d rows)", w.name(), world,
        w.scale(), w.batch(), rows);
    spark.sparkContext().setJobDescription("spark-trainer cluster bench: " + what);
    Dataset<Row> df = null;
    try {
      long t0 = System.nanoTime();
      df = w.syntheticData(spark, rows, partitions, o.seed()).cache();
      df.count();
      double gen = (System.nanoTime() - t0) / 1e9;
      log("%s: data generated and cached in %.2f s", what, gen);
      SparkTrainerModel m = new SparkTrainer()
          .setModelSpec(w.spec())
          .setOptimizer(w.optimizer())
          .setNumWorkers(world)
          .setBatchSize(w.batch())
          .setEpochs(o.epochs())
          .setSeed(o.seed())
          .setDevice(o.device())
          .setTimeoutSeconds(o.timeoutSeconds())
          .setFeaturesCol("features")
          .setLabelCol("label")
          .fit(df);
      TrainingSummary s = m.summary();
      Map<String, Object> e = BenchReport.entry(c, w, world, s, gen);
      log("%s: %.1f samples/s on %s (fit -> first step %.2f s)%n%s", what, (Double) e.get("ours"), e.get("card"),
          s.fitToFirstStepSeconds(), s);
      return e;
    } catch (RuntimeException | LinkageError e) {
      log("%s FAILED: %s", what, e);
      return BenchReport.failed(c, w, world, e);
    } finally {
      if (df != null) {
        df.unpersist();
      }
      spark.sparkContext().setJobDescription(null);
    }
  }

  /** The session and whether this class started it (then it also stops it). */
  record Session(SparkSession spark, boolean own) {}

  /**
   * The session to run in: the active or default one when there is one (Databricks, notebooks; {@code --master}
   * must then be absent), else a new one on {@code --master} or on the master spark-submit set.
   */
  static Session open(BenchOptions o) {
    Option<SparkSession> active = SparkSession.getActiveSession();
    Option<SparkSession> existing = active.isDefined() ? active : SparkSession.getDefaultSession();
    if (existing.isDefined()) {
      String running = existing.get().sparkContext().master();
      if (o.master() != null && !o.master().equals(running)) {
        throw new IllegalArgumentException("--master " + o.master() + ": a Spark session with master " + running
            + " is already running in this JVM; leave --master out to benchmark it");
      }
      o.conf().forEach((k, v) -> {
        try {
          existing.get().conf().set(k, v);
        } catch (RuntimeException e) {
          log("--conf %s ignored: the session is already running and this setting can only be given when it starts "
              + "(set it on the cluster or with spark-submit --conf)", k);
        }
      });
      return new Session(existing.get(), false);
    }
    if (o.master() == null && System.getProperty("spark.master") == null) {
      throw new IllegalArgumentException("no Spark master: give --master URL (e.g. --master 'local[*]' or "
          + "--master spark://host:7077) or run ClusterBench with spark-submit, which sets it");
    }
    String master = o.master() != null ? o.master() : System.getProperty("spark.master");
    SparkConf conf = new SparkConf(false);
    for (Map.Entry<Object, Object> p : System.getProperties().entrySet()) {
      String k = String.valueOf(p.getKey());
      if (k.startsWith("spark.") && !k.equals("spark.testing") && !k.equals("spark.test.home")) {
        conf.set(k, String.valueOf(p.getValue()));
      }
    }
    conf.setMaster(master).setIfMissing("spark.app.name", "spark-trainer cluster bench");
    if (!conf.contains("spark.serializer")) {
      conf.set("spark.serializer", "org.apache.spark.serializer.KryoSerializer");
      conf.set("spark.kryo.registrator", "dev.sparktrainer.spark.TrainerKryoRegistrator");
    }
    boolean localCluster = master.startsWith("local-cluster");
    if (localCluster) {
      // Note [local-cluster from a plain JVM]: the executors are new JVMs; they need this JVM's classpath and,
      // without a Spark installation (SPARK_HOME), Spark's test-mode launcher: spark.testing + spark.test.home
      // as system properties only while the context starts (what the library's LocalClusterSupport does); the
      // SparkConf is built without system properties, so the session itself does not run in test mode.
      conf.setIfMissing("spark.executor.extraClassPath",
          absolute(System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"))));
      conf.setIfMissing("spark.executorEnv.SPARK_SCALA_VERSION", "2.13");
      if (System.getenv("SPARK_HOME") == null) {
        conf.setIfMissing("spark.executorEnv.SPARK_SQL_TESTING", "1"); // the launcher then needs no Spark jars dir
      }
      conf.setIfMissing("spark.scheduler.minRegisteredResourcesRatio", "1.0");
    }
    o.conf().forEach(conf::set);
    boolean testHome = localCluster && System.getenv("SPARK_HOME") == null;
    try {
      if (testHome) {
        System.setProperty("spark.testing", "true");
        System.setProperty("spark.test.home", Files.createTempDirectory("cluster-bench-spark-home").toString());
      }
      SparkContext.getOrCreate(conf);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    } finally {
      if (testHome) {
        System.clearProperty("spark.testing");
        System.clearProperty("spark.test.home");
      }
    }
    return new Session(SparkSession.builder().getOrCreate(), true);
  }

  /** A classpath with every entry made absolute (executors of a local-cluster start in their own folders). */
  static String absolute(String classpath) {
    StringBuilder b = new StringBuilder();
    for (String e : classpath.split(java.io.File.pathSeparator)) {
      if (!e.isEmpty()) {
        b.append(b.length() > 0 ? java.io.File.pathSeparator : "")
            .append(e.endsWith("*") ? e : java.nio.file.Path.of(e).toAbsolutePath().toString());
      }
    }
    return b.toString();
  }

  private static void log(String fmt, Object... args) {
    System.out.println("[cluster-bench] " + String.format(Locale.ROOT, fmt, args));
  }
}
