package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.spark.GpuPlacement.Gpu;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Spark GPU address -> CUDA device (with and without CUDA_VISIBLE_DEVICES), and the duplicate-GPU check. */
@Timeout(60)
class GpuPlacementTest {
  @Test
  void withoutCudaVisibleDevicesTheAddressIsTheOrdinal() {
    assertEquals(new Gpu(3, "3"), GpuPlacement.resolve(" 3 ", null));
    IllegalStateException e = assertThrows(IllegalStateException.class,
        () -> GpuPlacement.resolve("GPU-8a1f", null));
    assertTrue(e.getMessage().startsWith("GPU address 'GPU-8a1f' is not a device ordinal and CUDA_VISIBLE_DEVICES "
        + "is not set"), e.getMessage());
    assertThrows(IllegalStateException.class, () -> GpuPlacement.resolve("-1", null));
  }

  @Test
  void anEntryOfCudaVisibleDevicesMapsToItsPosition() {
    assertEquals(new Gpu(1, "3"), GpuPlacement.resolve("3", "2,3"));
    assertEquals(new Gpu(0, "2"), GpuPlacement.resolve("2", "2, 3"));
    assertEquals(new Gpu(1, "0"), GpuPlacement.resolve("0", "1,0"));
    assertEquals(new Gpu(1, "GPU-b2"), GpuPlacement.resolve("GPU-b2", "GPU-a1,GPU-b2"));
    assertEquals(new Gpu(0, "MIG-GPU-a1/1/0"), GpuPlacement.resolve("MIG-GPU-a1/1/0", "MIG-GPU-a1/1/0"));
  }

  @Test
  void anOrdinalWithinCudaVisibleDevicesNamesItsEntry() {
    // A container or script that renumbers: address 0 is the first visible GPU, physical GPU 6.
    assertEquals(new Gpu(0, "6"), GpuPlacement.resolve("0", "6,7"));
    assertEquals(new Gpu(1, "GPU-b2"), GpuPlacement.resolve("1", "GPU-a1,GPU-b2"));
  }

  @Test
  void addressesCudaCannotSeeFail() {
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> GpuPlacement.resolve("5", "2,3"));
    assertEquals("GPU address '5' is not in CUDA_VISIBLE_DEVICES=2,3 and is not an ordinal below its 2 entries; the "
        + "GPU discovery script and CUDA_VISIBLE_DEVICES disagree (use conf/gpu-discovery.sh, which prints the "
        + "entries of CUDA_VISIBLE_DEVICES)", e.getMessage());
    e = assertThrows(IllegalStateException.class, () -> GpuPlacement.resolve("0", ""));
    assertTrue(e.getMessage().contains("CUDA_VISIBLE_DEVICES is empty"), e.getMessage());
    assertThrows(IllegalStateException.class, () -> GpuPlacement.resolve("GPU-zz", "GPU-a1"));
  }

  @Test
  void duplicatesNameTheGpuTheHostAndTheRanks() {
    assertNull(GpuPlacement.duplicates(List.of("0@h1", "1@h1", "0@h2", "1@h2")));
    assertNull(GpuPlacement.duplicates(List.of("", "", "")), "ranks without Spark GPUs are not compared");
    String m = GpuPlacement.duplicates(List.of("0@h1", "1@h1", "0@h1", "1@h2", "1@h2"));
    assertTrue(m.startsWith("the barrier tasks do not have a GPU each: GPU 0 on host h1 is used by ranks [0, 2]; "
        + "GPU 1 on host h2 is used by ranks [3, 4] (GPU@host of all ranks: [0@h1, 1@h1, 0@h1, 1@h2, 1@h2]). NCCL "
        + "needs one GPU per rank."), m);
    assertTrue(m.contains("spark.task.resource.gpu.amount"), m);
  }

  @Test
  void everyRankFailsWhenTwoRanksShareAGpu() {
    String[] keys = {"0@10.0.0.5", "1@10.0.0.5", "0@10.0.0.5"};
    List<String> outcome = LocalLauncher.run(3, 0, 30, wc -> {
      try {
        GpuPlacement.check(wc, keys[wc.rank()]);
        return "ok";
      } catch (IllegalStateException e) {
        return e.getMessage();
      }
    });
    for (int r = 0; r < 3; r++) {
      assertTrue(outcome.get(r).startsWith("rank " + r + ": the barrier tasks do not have a GPU each: GPU 0 on host "
          + "10.0.0.5 is used by ranks [0, 2]"), outcome.get(r));
    }
    assertEquals(List.of("ok", "ok"), LocalLauncher.run(2, 0, 30, wc -> {
      GpuPlacement.check(wc, wc.rank() + "@h");
      return "ok";
    }));
  }
}
