package dev.sparktrainer.examples

import dev.sparktrainer.api.{SparkTrainer, SparkTrainerModel}
import dev.sparktrainer.nn.ModelSpec
import dev.sparktrainer.optim.OptimizerConfig
import java.nio.charset.StandardCharsets
import java.nio.file.{Files, Path, Paths}
import java.util.Locale
import org.apache.spark.ml.{Pipeline, PipelineModel}
import org.apache.spark.ml.feature.{StandardScaler, StringIndexer, VectorAssembler}
import org.apache.spark.sql.{DataFrame, SparkSession}
import scala.util.Random

/**
 * An ETL job that ends in training, as a Spark user writes one in Scala: read raw CSV, clean and derive
 * features with Spark SQL, then a Pipeline of Spark ML stages with spark-trainer's estimator last.
 *
 * The data are sensor readings of machines in one of three states ("idle", "normal", "fault"): a machine id,
 * a timestamp, four raw channels (some missing, some out of range) and the state as text.
 *
 * {{{
 * spark-submit --class dev.sparktrainer.examples.EtlPipelineJob spark-trainer-examples.jar \
 *   --input readings.csv --model /tmp/model [--workers 2] [--epochs 5] [--device auto]
 * # without --input it writes and uses 20,000 synthetic readings
 * }}}
 */
object EtlPipelineJob {

  /** What a run gives back: the fitted pipeline and its accuracy on the held-out 20%. */
  final case class Result(model: PipelineModel, testAccuracy: Double, trainRows: Long, testRows: Long)

  /** Step 1 (Spark SQL): drop broken readings, derive features, keep the label as text. */
  def clean(spark: SparkSession, raw: DataFrame): DataFrame = {
    raw.createOrReplaceTempView("raw_readings")
    spark.sql(
      """SELECT machine,
        |       CAST(vibration AS DOUBLE)                       AS vibration,
        |       CAST(temperature AS DOUBLE)                     AS temperature,
        |       CAST(current AS DOUBLE)                         AS current,
        |       CAST(pressure AS DOUBLE)                        AS pressure,
        |       CAST(current AS DOUBLE) / CAST(pressure AS DOUBLE) AS load_ratio,
        |       LN(1 + ABS(CAST(vibration AS DOUBLE)))          AS log_vibration,
        |       HOUR(TO_TIMESTAMP(ts))                          AS hour,
        |       LOWER(TRIM(state))                              AS state
        |FROM raw_readings
        |WHERE vibration IS NOT NULL AND temperature IS NOT NULL AND current IS NOT NULL
        |  AND pressure IS NOT NULL AND CAST(pressure AS DOUBLE) > 0
        |  AND CAST(temperature AS DOUBLE) BETWEEN -40 AND 150
        |  AND state IS NOT NULL""".stripMargin)
  }

  /** Step 2 (Spark ML): label index, feature vector, scaling, then the network. */
  def pipeline(workers: Int, epochs: Int, device: String): Pipeline = {
    val features = Array("vibration", "temperature", "current", "pressure", "load_ratio", "log_vibration")
    val trainer = new SparkTrainer()
      .setModelSpec(ModelSpec.mlp(features.length, Array(32, 16), 3, "relu", 0f))
      .setOptimizer(OptimizerConfig.adamw(0.01))
      .setNumWorkers(workers)
      .setBatchSize(64)
      .setEpochs(epochs)
      .setSeed(7L)
      .setDevice(device)
      .setPrecision("auto") // bf16 mixed precision on GPUs, fp32 on CPUs
      .setFeaturesCol("scaled")
      .setLabelCol("label")
    new Pipeline().setStages(Array(
      new StringIndexer().setInputCol("state").setOutputCol("label").setStringOrderType("alphabetAsc"),
      new VectorAssembler().setInputCols(features).setOutputCol("raw_features"),
      new StandardScaler().setInputCol("raw_features").setOutputCol("scaled").setWithMean(true),
      trainer))
  }

  /** The whole job: read, clean, split, fit, evaluate, save. */
  def run(spark: SparkSession, input: String, modelPath: Option[String], workers: Int, epochs: Int,
      device: String): Result = {
    val raw = spark.read.option("header", "true").csv(input)
    val cleaned = clean(spark, raw).cache()
    val Array(train, test) = cleaned.randomSplit(Array(0.8, 0.2), 11L)
    val model = pipeline(workers, epochs, device).fit(train)
    val scored = model.transform(test)
    val testRows = scored.count()
    val right = scored.where("prediction = label").count()
    modelPath.foreach(p => model.write.overwrite().save(p))
    val result = Result(model, if (testRows == 0) 0.0 else right.toDouble / testRows, train.count(), testRows)
    cleaned.unpersist()
    result
  }

  /** The trained network's stage (its summary holds the per-epoch figures). */
  def trainerStage(model: PipelineModel): SparkTrainerModel =
    model.stages.collectFirst { case m: SparkTrainerModel => m }
      .getOrElse(throw new IllegalArgumentException("the pipeline has no SparkTrainerModel stage"))

  /**
   * Writes `rows` synthetic readings to `file` (CSV with a header): three machine states with different
   * channel distributions, about 3% of rows with a missing or out-of-range value, states in mixed case.
   */
  def writeSyntheticCsv(file: Path, rows: Int, seed: Long): Path = {
    val r = new Random(seed)
    val b = new StringBuilder("machine,ts,vibration,temperature,current,pressure,state\n")
    val states = Array("idle", "normal", "FAULT")
    for (i <- 0 until rows) {
      val s = i % 3
      val vibration = Array(0.2, 1.0, 3.0)(s) + r.nextGaussian() * 0.4
      val temperature = Array(35.0, 60.0, 85.0)(s) + r.nextGaussian() * 8
      val current = Array(2.0, 10.0, 14.0)(s) + r.nextGaussian() * 2
      val pressure = Array(1.0, 3.0, 2.0)(s) + r.nextGaussian() * 0.3
      val broken = r.nextInt(100) < 3
      val temp = if (broken && r.nextBoolean()) "999" else f"$temperature%.3f"
      val vib = if (broken) "" else f"$vibration%.4f"
      b.append(String.format(Locale.ROOT, "m%03d,2026-11-%02d %02d:%02d:00,%s,%s,%.3f,%.3f,%s%n",
        Int.box(i % 50), Int.box(1 + i % 28), Int.box(i % 24), Int.box(i % 60), vib, temp,
        Double.box(current), Double.box(math.max(0.05, pressure)), states(s)))
    }
    Files.writeString(file, b.toString, StandardCharsets.UTF_8)
    file
  }

  def main(args: Array[String]): Unit = {
    var input: Option[String] = None
    var model: Option[String] = None
    var workers = 2
    var epochs = 5
    var device = "auto"
    var master: Option[String] = None
    val it = args.iterator
    while (it.hasNext) {
      it.next() match {
        case "--input" => input = Some(it.next())
        case "--model" => model = Some(it.next())
        case "--workers" => workers = it.next().toInt
        case "--epochs" => epochs = it.next().toInt
        case "--device" => device = it.next()
        case "--master" => master = Some(it.next())
        case other => throw new IllegalArgumentException(s"unknown option $other (known: --input CSV, --model DIR, " +
          "--workers N, --epochs N, --device cpu|cuda|auto, --master URL)")
      }
    }
    val builder = SparkSession.builder().appName("spark-trainer ETL example")
    master.foreach(builder.master)
    val spark = builder.getOrCreate()
    try {
      val csv = input.getOrElse(writeSyntheticCsv(Files.createTempFile("readings", ".csv"), 20000, 1L).toString)
      val res = run(spark, csv, model, workers, epochs, device)
      println(trainerStage(res.model).summary())
      println(f"trained on ${res.trainRows} rows; test accuracy: ${res.testAccuracy}%.4f on ${res.testRows} rows")
      model.foreach(p => println(s"pipeline model saved to $p"))
    } finally {
      spark.stop()
    }
  }
}
