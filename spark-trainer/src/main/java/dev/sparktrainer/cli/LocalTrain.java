package dev.sparktrainer.cli;

import dev.sparktrainer.api.SparkTrainer;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.spark.Backends;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Evaluator;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.nio.file.Path;
import java.util.Locale;

/**
 * Trains the Fashion-MNIST MLP (784-256-128-10, AdamW) in this process on the CPU, without Spark.
 * Options: --data DIR (default /usr/share/datasets/fashion-mnist), --epochs 3, --batch 128, --lr 1e-3,
 * --seed 42, --precision fp32 (the estimator's values: fp32, bf16, or auto, which is fp32 on the CPU; bf16 on
 * the CPU rounds the linear layers' inputs to bf16, to check the numerics, and is not faster). Prints per-epoch
 * loss/accuracy/throughput and ends with "test accuracy: 0.xxxx".
 */
public final class LocalTrain {
  private LocalTrain() {}

  public static void main(String[] args) throws Exception {
    Path data = FashionMnist.DEFAULT_DIR;
    int epochs = 3;
    int batch = 128;
    double lr = 1e-3;
    long seed = 42;
    String precision = "fp32";
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (i + 1 >= args.length) {
        throw new IllegalArgumentException("option " + a + " needs a value");
      }
      String v = args[++i];
      switch (a) {
        case "--data" -> data = Path.of(v);
        case "--epochs" -> epochs = Integer.parseInt(v);
        case "--batch" -> batch = Integer.parseInt(v);
        case "--lr" -> lr = Double.parseDouble(v);
        case "--seed" -> seed = Long.parseLong(v);
        case "--precision" -> precision = SparkTrainer.checkPrecision(v);
        default -> throw new IllegalArgumentException("unknown option " + a
            + " (known: --data, --epochs, --batch, --lr, --seed, --precision)");
      }
    }
    HeapRowStore train = FashionMnist.train(data);
    HeapRowStore test = FashionMnist.test(data);
    ModelSpec spec = ModelSpec.mlp(FashionMnist.PIXELS, new int[] {256, 128}, FashionMnist.CLASSES, "relu", 0f);
    TrainerConfig cfg = TrainerConfig.builder().epochs(epochs).batchSize(batch).seed(seed)
        .optimizer(OptimizerConfig.adamw(lr)).build();
    try (CpuDevice device = new CpuDevice(); LocalCommunicator comm = new LocalCommunicator()) {
      String trainedIn = Backends.resolvePrecision(precision, "cpu");
      System.out.println("device: cpu (BLAS: " + device.blasName() + "), precision " + trainedIn + ", model: " + spec);
      Model model = new Model(spec, device, Backends.computeDType(trainedIn));
      Trainer trainer = new Trainer(model, cfg, comm);
      trainer.initializeWeights();
      SamplerPlan plan = new SamplerPlan(train.rows(), 1, batch, seed, cfg.dropLast());
      for (EpochStats s : trainer.fit(train, plan.rowsOfRank(0), Math.toIntExact(plan.stepsPerEpoch()))) {
        System.out.printf(Locale.ROOT, "epoch %d: loss %.4f, train accuracy %.4f, %.0f samples/s (data wait %.1f%%)%n",
            s.epoch() + 1, s.loss(), s.accuracy(), s.samplesPerSecond(), 100 * s.dataWaitSeconds() / s.seconds());
      }
      Evaluator.Result r = Evaluator.evaluate(model, cfg.loss(), test, 1000);
      System.out.printf(Locale.ROOT, "test loss: %.4f%n", r.loss());
      System.out.printf(Locale.ROOT, "test accuracy: %.4f%n", r.accuracy());
    }
  }
}
