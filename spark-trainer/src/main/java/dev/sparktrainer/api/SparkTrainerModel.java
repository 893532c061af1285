package dev.sparktrainer.api;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.checkpoint.CheckpointData;
import dev.sparktrainer.checkpoint.CheckpointIO;
import dev.sparktrainer.checkpoint.TensorData;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.spark.FeatureColumns;
import dev.sparktrainer.spark.Inference;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Map;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.ml.Model;
import org.apache.spark.ml.linalg.VectorUDT;
import org.apache.spark.ml.param.IntParam;
import org.apache.spark.ml.param.Param;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.ml.param.ParamValidators;
import org.apache.spark.ml.param.StringArrayParam;
import org.apache.spark.ml.util.DefaultParamsReader;
import org.apache.spark.ml.util.DefaultParamsWriter$;
import org.apache.spark.ml.util.MLReader;
import org.apache.spark.ml.util.MLWritable;
import org.apache.spark.ml.util.MLWriter;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/**
 * A trained network: {@code transform(df)} adds a prediction column (class index as double, or the
 * regression value) and, for classifiers, a probability vector, computed in batches per partition. Saved and
 * loaded with Spark ML persistence ({@code write().save(path)}, {@link #load}), also inside a Pipeline; the
 * weights are stored in the checkpoint format (JSON header + raw little-endian floats).
 */
public final class SparkTrainerModel extends Model<SparkTrainerModel> implements MLWritable {
  private static final long serialVersionUID = 1L;
  private static final String WEIGHTS_FILE = "weights.stckpt";
  /** Folder under a saved model that holds its training summary (see {@link TrainingSummary#load}). */
  public static final String SUMMARY_DIR = "summary";
  private final String uid;
  private final ModelSpec spec;
  private final Loss loss;
  private final float[] parameters;
  private final TrainingSummary summary;

  private final Param<String> featuresCol;
  private final StringArrayParam featureCols;
  private final Param<String> predictionCol;
  private final Param<String> probabilityCol;
  private final IntParam batchSize;
  private final Param<String> precision;

  public SparkTrainerModel(String uid, ModelSpec spec, Loss loss, float[] parameters, TrainingSummary summary) {
    this.uid = uid;
    this.spec = spec;
    this.loss = loss;
    this.parameters = parameters;
    this.summary = summary;
    featuresCol = new Param<>(this, "featuresCol", "features column: vector, array of numbers or a number");
    featureCols = new StringArrayParam(this, "featureCols", "several numeric feature columns");
    predictionCol = new Param<>(this, "predictionCol", "output column of predictions");
    probabilityCol = new Param<>(this, "probabilityCol", "output column of class probabilities");
    batchSize = new IntParam(this, "batchSize", "rows per inference batch", ParamValidators.gt(0));
    setDefault(featuresCol, "features");
    setDefault(featureCols, new String[0]);
    setDefault(predictionCol, "prediction");
    setDefault(probabilityCol, "probability");
    precision = new Param<>(this, "precision", "the precision the model was trained in: fp32 or bf16 (the "
        + "estimator's precision, auto resolved); the weights are fp32 either way and transform computes in fp32",
        ParamValidators.inArray(new String[] {"fp32", "bf16"}));
    setDefault(batchSize, 1024);
    setDefault(precision, "fp32");
  }

  @Override
  public String uid() {
    return uid;
  }

  public Param<String> featuresCol() {
    return featuresCol;
  }

  public StringArrayParam featureCols() {
    return featureCols;
  }

  public Param<String> predictionCol() {
    return predictionCol;
  }

  public Param<String> probabilityCol() {
    return probabilityCol;
  }

  public IntParam batchSize() {
    return batchSize;
  }

  public Param<String> precision() {
    return precision;
  }

  /** "fp32" or "bf16": how the model was trained (saved with the model's params; "fp32" for older models). */
  public String getPrecision() {
    return $(precision);
  }

  /** Records the precision the fit trained in (set by {@link SparkTrainer#fit}). */
  SparkTrainerModel withPrecision(String v) {
    set(precision, v);
    return this;
  }

  public SparkTrainerModel setFeaturesCol(String v) {
    set(featuresCol, v);
    return this;
  }

  public SparkTrainerModel setFeatureCols(String[] v) {
    set(featureCols, v);
    return this;
  }

  public SparkTrainerModel setPredictionCol(String v) {
    set(predictionCol, v);
    return this;
  }

  public SparkTrainerModel setProbabilityCol(String v) {
    set(probabilityCol, v);
    return this;
  }

  public SparkTrainerModel setBatchSize(int v) {
    set(batchSize, v);
    return this;
  }

  public ModelSpec spec() {
    return spec;
  }

  public Loss lossKind() {
    return loss;
  }

  /** A copy of the trained flat parameter buffer. */
  public float[] parameters() {
    return parameters.clone();
  }

  /** The training summary; null for a model loaded from disk. */
  public TrainingSummary summary() {
    return summary;
  }

  public boolean hasSummary() {
    return summary != null;
  }

  /** The output schema: input columns + prediction (+ probability for classifiers). */
  public static StructType outputSchema(StructType in, String predictionCol, String probabilityCol, Loss loss,
      int outputs) {
    for (String c : new String[] {predictionCol, loss == Loss.CROSS_ENTROPY ? probabilityCol : null}) {
      if (c != null && java.util.Arrays.asList(in.fieldNames()).contains(c)) {
        throw new IllegalArgumentException("output column '" + c + "' already exists in the DataFrame; set another "
            + "name (setPredictionCol / setProbabilityCol) or drop it");
      }
    }
    StructType out = in.add(new StructField(predictionCol,
        loss == Loss.MSE && outputs > 1 ? new VectorUDT() : DataTypes.DoubleType, false,
        org.apache.spark.sql.types.Metadata.empty()));
    if (loss == Loss.CROSS_ENTROPY) {
      out = out.add(new StructField(probabilityCol, new VectorUDT(), false,
          org.apache.spark.sql.types.Metadata.empty()));
    }
    return out;
  }

  @Override
  public StructType transformSchema(StructType schema) {
    return outputSchema(schema, $(predictionCol), $(probabilityCol), loss, spec.outputSize());
  }

  @Override
  public Dataset<Row> transform(Dataset<?> dataset) {
    StructType outSchema = transformSchema(dataset.schema());
    Dataset<Row> withFeatures = dataset.toDF().withColumn("__st_features",
        FeatureColumns.featuresExpr(dataset.schema(), $(featuresCol), $(featureCols)));
    Broadcast<float[]> weights = JavaSparkContext.fromSparkContext(dataset.sparkSession().sparkContext())
        .broadcast(parameters);
    Inference fn = new Inference(spec.toJson(), loss, weights, (Integer) $(batchSize), dataset.schema().size());
    return withFeatures.mapPartitions(fn, Encoders.row(outSchema));
  }

  @Override
  public SparkTrainerModel copy(ParamMap extra) {
    SparkTrainerModel m = new SparkTrainerModel(uid, spec, loss, parameters, summary);
    return copyValues(m, extra).setParent(parent());
  }

  @Override
  public MLWriter write() {
    return new Writer(this);
  }

  /** Reads a model saved with {@code write().save(path)} (also used by PipelineModel.load). */
  public static MLReader<SparkTrainerModel> read() {
    return new Reader();
  }

  public static SparkTrainerModel load(String path) {
    return read().load(path);
  }

  private static final class Writer extends MLWriter {
    private final SparkTrainerModel instance;

    Writer(SparkTrainerModel instance) {
      this.instance = instance;
    }

    @Override
    public void saveImpl(String path) {
      DefaultParamsWriter$.MODULE$.saveMetadata(instance, path, sparkSession());
      ObjectNode extra = new ObjectMapper().createObjectNode();
      extra.put("loss", instance.loss.name());
      ObjectNode optimizer = new ObjectMapper().createObjectNode();
      optimizer.put("type", "none");
      optimizer.put("steps", 0);
      CheckpointData.Builder b = CheckpointData.builder().step(0).epoch(0)
          .modelSpec(instance.spec.toJsonNode()).optimizer(optimizer).extra(extra);
      b.tensor("parameters", TensorData.ofFloats(new int[] {instance.parameters.length}, instance.parameters));
      try {
        CheckpointIO.write(b.build(), new org.apache.hadoop.fs.Path(path, WEIGHTS_FILE).toString(),
            sparkSession().sparkContext().hadoopConfiguration());
      } catch (IOException e) {
        throw new UncheckedIOException("could not write the model weights under " + path, e);
      }
      if (instance.summary != null) { // issue 9: summary.json, epochs.csv, ranks.csv, curves.png next to the model
        SummaryFiles.write(instance.summary, new org.apache.hadoop.fs.Path(path, SUMMARY_DIR).toString(),
            sparkSession().sparkContext().hadoopConfiguration());
      }
    }
  }

  private static final class Reader extends MLReader<SparkTrainerModel> {
    @Override
    public SparkTrainerModel load(String path) {
      DefaultParamsReader.Metadata meta = DefaultParamsReader.loadMetadata(path, sparkSession(),
          SparkTrainerModel.class.getName());
      CheckpointData data;
      try {
        data = CheckpointIO.read(new org.apache.hadoop.fs.Path(path, WEIGHTS_FILE).toString(),
            sparkSession().sparkContext().hadoopConfiguration());
      } catch (IOException e) {
        throw new UncheckedIOException("could not read the model weights under " + path, e);
      }
      ModelSpec spec = ModelSpec.fromJsonNode(data.modelSpec());
      Loss loss = Loss.valueOf(data.extra().get("loss").asText());
      Map<String, TensorData> tensors = data.tensors();
      TensorData t = tensors.get("parameters");
      if (t == null) {
        throw new IllegalArgumentException(path + ": the weights file has no 'parameters' tensor");
      }
      float[] params = t.toFloats();
      SparkTrainerModel m = new SparkTrainerModel(meta.uid(), spec, loss, params, null);
      meta.getAndSetParams(m, scala.Option.empty());
      return m;
    }
  }
}
