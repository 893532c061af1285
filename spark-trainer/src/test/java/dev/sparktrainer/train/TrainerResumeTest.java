package dev.sparktrainer.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.checkpoint.CheckpointData;
import dev.sparktrainer.checkpoint.CheckpointException;
import dev.sparktrainer.checkpoint.CheckpointIO;
import dev.sparktrainer.checkpoint.CheckpointInfo;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Checkpoints written during training resume to bitwise the same weights as an uninterrupted run. */
class TrainerResumeTest {
  static final ModelSpec SPEC = ModelSpec.builder().input(6).linear(12).gelu().dropout(0.2f).linear(3).build();

  static HeapRowStore data(int n) {
    Random r = new Random(5);
    float[] f = new float[n * 6];
    int[] l = new int[n];
    for (int i = 0; i < n; i++) {
      l[i] = i % 3;
      for (int j = 0; j < 6; j++) {
        f[i * 6 + j] = (float) (r.nextGaussian() + (j == l[i] ? 2 : 0));
      }
    }
    return new HeapRowStore(f, l, 6);
  }

  static TrainerConfig config(int accumulation) {
    return TrainerConfig.builder().epochs(3).batchSize(8).seed(11).accumulation(accumulation)
        .optimizer(OptimizerConfig.adamw(0.01)).schedule(LrSchedule.warmupCosine(3, 0, 0.001)).clipNorm(1.0)
        .build();
  }

  static float[] run(TrainerConfig cfg, HeapRowStore store, Path dir, CheckpointData resumeFrom) throws Exception {
    SamplerPlan plan = new SamplerPlan(store.rows(), 1, cfg.batchSize(), cfg.seed(), false);
    try (CpuDevice d = new CpuDevice()) {
      Model m = new Model(SPEC, d);
      Trainer t = new Trainer(m, cfg, new LocalCommunicator());
      if (dir != null) {
        t.checkpointing(new CheckpointPolicy(dir.toUri().toString(), 4, 100), new Configuration());
      }
      if (resumeFrom == null) {
        t.initializeWeights();
      } else {
        t.resume(resumeFrom);
      }
      t.fit(store, plan.rowsOfRank(0), (int) plan.stepsPerEpoch());
      return m.parametersToHost();
    }
  }

  @Test
  void resumeFromEveryCheckpointGivesTheSameWeights(@TempDir Path dir) throws Exception {
    for (int accumulation : new int[] {1, 2}) {
      Path sub = dir.resolve("acc" + accumulation);
      HeapRowStore store = data(100); // 13 micro-batches per epoch: a partial accumulation group at the end
      TrainerConfig cfg = config(accumulation);
      float[] full = run(cfg, store, sub, null);
      List<CheckpointInfo> all = CheckpointIO.listValid(sub.toUri().toString(), new Configuration());
      assertTrue(all.size() >= 4, "expected several checkpoints, got " + all);
      for (CheckpointInfo info : all) {
        CheckpointData c = CheckpointIO.read(info.path(), new Configuration());
        float[] resumed = run(cfg, store, null, c);
        assertArrayEquals(full, resumed, "resume from step " + info.step() + " (accumulation " + accumulation + ")");
      }
    }
  }

  @Test
  void resumeWithOtherSettingsIsRefused(@TempDir Path dir) throws Exception {
    HeapRowStore store = data(40);
    run(config(1), store, dir, null);
    CheckpointData c = CheckpointIO.latest(dir.toUri().toString(), new Configuration()).orElseThrow();
    TrainerConfig other = TrainerConfig.builder().epochs(3).batchSize(4).seed(11).build();
    try (CpuDevice d = new CpuDevice()) {
      Trainer t = new Trainer(new Model(SPEC, d), other, new LocalCommunicator());
      CheckpointException e = assertThrows(CheckpointException.class, () -> t.resume(c));
      assertEquals("checkpoint at step " + c.step() + " was written with batch size 8 but this job has 4; resuming "
          + "would not continue the same run. Use the same settings or another checkpoint directory", e.getMessage());
    }
  }
}
