package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.file.Files;
import java.util.List;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** The foundation's acceptance test: the Fashion-MNIST MLP learns, and the same seed gives the same bits. */
class FashionMnistMlpTest {
  static HeapRowStore train;
  static HeapRowStore test;

  @BeforeAll
  static void load() throws Exception {
    assumeTrue(Files.isDirectory(FashionMnist.DEFAULT_DIR),
        "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); .ci/run installs it");
    train = FashionMnist.train(FashionMnist.DEFAULT_DIR);
    test = FashionMnist.test(FashionMnist.DEFAULT_DIR);
  }

  record Run(float[] params, List<EpochStats> stats, double testAccuracy) {}

  static Run train(long seed) {
    ModelSpec spec = ModelSpec.mlp(784, new int[] {256, 128}, 10, "relu", 0f);
    TrainerConfig cfg = TrainerConfig.builder().epochs(3).batchSize(128).seed(seed)
        .optimizer(OptimizerConfig.adamw(1e-3)).build();
    try (CpuDevice d = new CpuDevice()) {
      Model m = new Model(spec, d);
      Trainer t = new Trainer(m, cfg, new LocalCommunicator());
      t.initializeWeights();
      SamplerPlan plan = new SamplerPlan(train.rows(), 1, 128, seed, false);
      List<EpochStats> stats = t.fit(train, plan.rowsOfRank(0), (int) plan.stepsPerEpoch());
      double acc = Evaluator.evaluate(m, cfg.loss(), test, 1000).accuracy();
      return new Run(m.parametersToHost(), stats, acc);
    }
  }

  @Test
  void mlpReaches86PercentAndIsBitwiseDeterministic() {
    Run a = train(7);
    Run b = train(7);
    assertTrue(a.testAccuracy() >= 0.86, "test accuracy " + a.testAccuracy() + " < 0.86");
    assertTrue(a.stats().get(2).loss() < a.stats().get(0).loss(), "loss did not fall: " + a.stats());
    assertArrayEquals(a.params(), b.params(), "same seed must give bitwise-identical weights");
    assertTrue(a.testAccuracy() == b.testAccuracy());
  }
}
