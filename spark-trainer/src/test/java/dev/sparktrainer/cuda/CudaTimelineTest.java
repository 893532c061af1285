package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.StepTimeline;
import dev.sparktrainer.engine.Tensor;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** Note [step timeline] on a GPU: timed events on the compute stream, folded in bounded batches. */
class CudaTimelineTest {
  @Test
  void intervalsByLabelCoverTheQueuedWork() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0); StepTimeline t = d.newTimeline()) {
      Tensor x = d.allocate(DType.FLOAT32, 1 << 24);
      int rounds = CudaTimeline.PENDING + 44; // more marks than stay pending: the oldest are folded on the way
      t.mark("start");
      for (int i = 0; i < rounds; i++) {
        d.fill(x, i);
        t.mark("fill");
        d.scale(x, 0.5f);
        t.mark("scale");
      }
      long h0 = System.nanoTime();
      Map<String, Double> m = t.drain();
      double hostMs = (System.nanoTime() - h0) / 1e6;
      assertEquals(List.of("fill", "scale"), List.copyOf(m.keySet()));
      assertTrue(m.get("fill") > 0 && m.get("scale") > 0, m.toString());
      float[] host = new float[1];
      d.download(x.view(0, 1), host, 0);
      assertEquals((rounds - 1) * 0.5f, host[0], 0f, "the marked work ran in order");
      CudaTestLog.note(String.format("timeline of %d fill+scale rounds over 64 MiB: fill %.3f ms, scale %.3f ms "
          + "(drain waited %.1f ms)", rounds, m.get("fill"), m.get("scale"), hostMs));
      assertTrue(t.drain().isEmpty(), "drain clears");
    }
  }

  @Test
  void markWhileCapturingThrowsAndTheCaptureFails() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0); StepTimeline t = d.newTimeline()) {
      Tensor x = d.allocate(DType.FLOAT32, 1024);
      d.fill(x, 1f);
      assertThrows(dev.sparktrainer.engine.GraphCaptureException.class, () -> d.captureGraph(() -> {
        d.scale(x, 2f);
        t.mark("inside");
      }));
      t.mark("after");
      t.mark("again");
      assertEquals(List.of("again"), List.copyOf(t.drain().keySet()));
    }
  }
}
