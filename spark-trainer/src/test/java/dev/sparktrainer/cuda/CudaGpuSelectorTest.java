package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** The GPU selection rule (pure logic; runs without a GPU). */
class CudaGpuSelectorTest {
  @Test
  void assignedGpuFromTaskResourcesWins() {
    assertEquals(1, GpuSelector.select(1, 0, 2));
    assertEquals(0, GpuSelector.select(0, 5, 8));
  }

  @Test
  void withoutAssignmentRankModuloDeviceCount() {
    assertEquals(0, GpuSelector.select(-1, 0, 2));
    assertEquals(1, GpuSelector.select(-1, 1, 2));
    assertEquals(0, GpuSelector.select(-1, 2, 2));
    assertEquals(2, GpuSelector.select(-1, 5, 3));
  }

  @Test
  void impossibleAssignmentsFailWithAClearMessage() {
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> GpuSelector.select(3, 0, 2));
    assertTrue(e.getMessage().contains("assigned GPU 3") && e.getMessage().contains("CUDA_VISIBLE_DEVICES"),
        e.getMessage());
    IllegalStateException none = assertThrows(IllegalStateException.class, () -> GpuSelector.select(-1, 0, 0));
    assertTrue(none.getMessage().contains("no CUDA device"), none.getMessage());
  }
}
