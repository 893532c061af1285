package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Evaluator;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.condition.EnabledIfSystemProperty;

/**
 * The Fashion-MNIST CNN ({@link ModelZoo#fashionMnistCnn()}) trained on the CPU backend.
 *
 * <ul>
 *   <li>{@link #learnsOnASubset()} (CI): one epoch on the first {@value #CI_ROWS} training images (AdamW 1e-3,
 *       batch {@value #BATCH}), evaluated on the first {@value #CI_TEST_ROWS} test images before and after: the
 *       test loss must fall by more than half and the accuracy beat chance (10 %) by far (>= 75 %).
 *   <li>{@link #fullRunReaches91Percent()} (off by default; {@code -Dcnn.full=true}): the whole training set
 *       for {@code -Dcnn.epochs} epochs (default {@value #FULL_EPOCHS}; AdamW 1e-3 with cosine decay to 0), the
 *       whole test set, >= 91 %. It prints the per-epoch figures; benchmarks/README.md records a run. Command:
 *       {@code mvn -B -pl spark-trainer test -Dtest=CnnFashionMnistTest#fullRunReaches91Percent -Dcnn.full=true}
 * </ul>
 */
class CnnFashionMnistTest {
  static final int CI_ROWS = 6144;
  static final int CI_TEST_ROWS = 2000;
  static final int FULL_EPOCHS = 8;
  static final int BATCH = 64;
  static HeapRowStore train;
  static HeapRowStore test;

  @BeforeAll
  static void load() throws Exception {
    assumeTrue(Files.isDirectory(FashionMnist.DEFAULT_DIR),
        "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); .ci/run installs it");
    train = FashionMnist.train(FashionMnist.DEFAULT_DIR);
    test = FashionMnist.test(FashionMnist.DEFAULT_DIR);
  }

  static HeapRowStore head(HeapRowStore s, int rows) {
    return new HeapRowStore(Arrays.copyOf(s.features(), rows * s.dim()), Arrays.copyOf(s.labels(), rows), s.dim());
  }

  record Run(List<EpochStats> stats, Evaluator.Result before, Evaluator.Result test, double seconds) {}

  static Run train(HeapRowStore trainRows, HeapRowStore testRows, TrainerConfig cfg) {
    ModelSpec spec = ModelZoo.fashionMnistCnn();
    long t0 = System.nanoTime();
    try (CpuDevice d = new CpuDevice()) {
      Model m = new Model(spec, d);
      Trainer t = new Trainer(m, cfg, new LocalCommunicator());
      t.initializeWeights();
      Evaluator.Result before = Evaluator.evaluate(m, cfg.loss(), testRows, 500);
      SamplerPlan plan = new SamplerPlan(trainRows.rows(), 1, cfg.batchSize(), cfg.seed(), false);
      List<EpochStats> stats = t.fit(trainRows, plan.rowsOfRank(0), (int) plan.stepsPerEpoch());
      Evaluator.Result r = Evaluator.evaluate(m, cfg.loss(), testRows, 500);
      return new Run(stats, before, r, (System.nanoTime() - t0) / 1e9);
    }
  }

  @Test
  @Timeout(300)
  void learnsOnASubset() {
    TrainerConfig cfg = TrainerConfig.builder().epochs(1).batchSize(BATCH).seed(11)
        .optimizer(OptimizerConfig.adamw(1e-3)).build();
    Run run = train(head(train, CI_ROWS), head(test, CI_TEST_ROWS), cfg);
    System.out.println("CnnFashionMnistTest (CI subset): " + run.stats() + "\n test before " + run.before()
        + ", after " + run.test() + "; " + run.seconds() + " s");
    assertEquals(1, run.stats().size());
    assertTrue(run.test().loss() < 0.5 * run.before().loss(), "test loss did not fall by half: "
        + run.before().loss() + " -> " + run.test().loss());
    assertTrue(run.test().accuracy() >= 0.75, "test accuracy " + run.test().accuracy() + " (chance is 0.10)");
  }

  @Test
  @EnabledIfSystemProperty(named = "cnn.full", matches = "true")
  void fullRunReaches91Percent() {
    int epochs = Integer.getInteger("cnn.epochs", FULL_EPOCHS);
    TrainerConfig cfg = TrainerConfig.builder().epochs(epochs).batchSize(BATCH).seed(42)
        .optimizer(OptimizerConfig.adamw(1e-3)).schedule(LrSchedule.warmupCosine(0, 0, 0)).build();
    Run run = train(train, test, cfg);
    for (EpochStats s : run.stats()) {
      System.out.printf("epoch %d: loss %.4f, train accuracy %.4f, %.0f samples/s, %.1f s%n", s.epoch() + 1,
          s.loss(), s.accuracy(), s.samplesPerSecond(), s.seconds());
    }
    System.out.printf("CnnFashionMnistTest full run: %d epochs, test accuracy %.4f, test loss %.4f, %.1f s%n",
        epochs, run.test().accuracy(), run.test().loss(), run.seconds());
    assertTrue(run.test().accuracy() >= 0.91, "test accuracy " + run.test().accuracy());
  }
}
