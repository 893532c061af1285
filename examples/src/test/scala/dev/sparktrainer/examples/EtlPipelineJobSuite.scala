package dev.sparktrainer.examples

import dev.sparktrainer.api.{SparkTrainerModel, TrainingSummary}
import java.nio.file.{Files, Path}
import org.apache.spark.ml.PipelineModel
import org.apache.spark.sql.SparkSession
import org.scalatest.BeforeAndAfterAll
import org.scalatest.funsuite.AnyFunSuite

/** The Scala ETL example end to end on small synthetic data: local[2], W = 2, CPU. */
class EtlPipelineJobSuite extends AnyFunSuite with BeforeAndAfterAll {
  private var spark: SparkSession = _
  private var dir: Path = _

  override def beforeAll(): Unit = {
    dir = Files.createTempDirectory("etl-suite")
    spark = SparkSession.builder()
      .master("local[2]")
      .appName("EtlPipelineJobSuite")
      .config("spark.ui.enabled", "false")
      .config("spark.driver.host", "127.0.0.1")
      .config("spark.driver.bindAddress", "127.0.0.1")
      .config("spark.sql.shuffle.partitions", "2")
      .config("spark.stage.maxConsecutiveAttempts", "1")
      .config("spark.sparktrainer.progress", "off")
      .getOrCreate()
  }

  override def afterAll(): Unit = {
    if (spark != null) spark.stop()
  }

  test("Spark SQL cleaning drops broken rows and derives the features") {
    val csv = EtlPipelineJob.writeSyntheticCsv(dir.resolve("clean.csv"), 600, 3L)
    val raw = spark.read.option("header", "true").csv(csv.toString)
    val cleaned = EtlPipelineJob.clean(spark, raw)
    val n = cleaned.count()
    assert(n < 600 && n > 540, s"$n rows kept of 600 (about 3% are broken)")
    assert(cleaned.where("temperature > 150 OR vibration IS NULL").count() === 0)
    assert(cleaned.select("state").distinct().collect().map(_.getString(0)).sorted.toSeq === Seq("fault", "idle", "normal"))
    assert(cleaned.columns.contains("load_ratio") && cleaned.columns.contains("log_vibration"))
  }

  test("the pipeline trains with spark-trainer, predicts well, saves and loads") {
    val csv = EtlPipelineJob.writeSyntheticCsv(dir.resolve("readings.csv"), 2000, 1L)
    val modelDir = dir.resolve("model").toString
    val res = EtlPipelineJob.run(spark, csv.toString, Some(modelDir), workers = 2, epochs = 3, device = "cpu")
    assert(res.testAccuracy > 0.9, s"test accuracy ${res.testAccuracy}")
    val summary = EtlPipelineJob.trainerStage(res.model).summary()
    assert(summary.epochs().size() === 3)
    assert(summary.worldSize() === 2)
    assert(summary.epochs().get(2).loss() < summary.epochs().get(0).loss())
    assert(summary.precision() === "fp32", "precision auto trains in fp32 on the CPU")

    val loaded = PipelineModel.load(modelDir)
    val test = EtlPipelineJob.clean(spark, spark.read.option("header", "true").csv(csv.toString)).limit(50)
    val a = res.model.transform(test).select("prediction").collect().map(_.getDouble(0)).toSeq
    val b = loaded.transform(test).select("prediction").collect().map(_.getDouble(0)).toSeq
    assert(a === b)
    // the network's stage was saved with its training summary next to it
    val stageDir = Files.list(dir.resolve("model").resolve("stages")).filter(_.getFileName.toString.contains("sparkTrainer"))
      .findFirst().get()
    val back = TrainingSummary.load(stageDir.resolve(SparkTrainerModel.SUMMARY_DIR).toString)
    assert(back.epochs() === summary.epochs())
    assert(back.precision() === "fp32")
    assert(EtlPipelineJob.trainerStage(loaded).getPrecision === "fp32")
  }
}
