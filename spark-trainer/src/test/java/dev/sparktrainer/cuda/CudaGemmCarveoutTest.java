package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.assertCloseNormwise;
import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.train.Trainer;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Note [GEMM SM carve-out] (CudaDevice) on a GPU: the carve-out is checked against the GPU's SM count; matmuls
 * chosen and launched for fewer SMs give the results of the same matmuls on all SMs (within fp32 accumulation:
 * cuBLASLt may choose another algorithm); and a 2-GPU fit whose buckets overlap backward with a carve-out keeps
 * its ranks bitwise in step and lands where the fit without one does.
 */
class CudaGemmCarveoutTest {
  @BeforeEach
  void gpu() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni(); // cuBLASLt is reached through the JNI library
  }

  @Test
  void carveoutMustLeaveTheGemmSomeSms() {
    try (CudaDevice d = new CudaDevice(0)) {
      int sms = d.smCount();
      assertTrue(sms > 1, "SM count " + sms);
      IllegalArgumentException neg = assertThrows(IllegalArgumentException.class, () -> d.gemmSmCarveout(-1));
      assertTrue(neg.getMessage().contains("gemmSmCarveout"), neg.getMessage());
      IllegalArgumentException all = assertThrows(IllegalArgumentException.class, () -> d.gemmSmCarveout(sms));
      assertTrue(all.getMessage().contains(String.valueOf(sms)), all.getMessage());
      d.gemmSmCarveout(sms - 1); // one SM left: allowed
      d.gemmSmCarveout(0);
    }
  }

  @Test
  void matmulsOnFewerSmsGiveTheSameProducts() {
    // The benchmark MLP's backward shapes, scaled down: dW = dy^T x and dx = dy W in bf16 with fp32 results.
    int batch = 2048;
    int in = 2048;
    int out = 4096;
    try (CudaDevice d = new CudaDevice(0)) {
      Tensor x = d.allocate(DType.BFLOAT16, batch, in);
      Tensor w = d.allocate(DType.BFLOAT16, out, in);
      Tensor dy = d.allocate(DType.BFLOAT16, batch, out);
      d.upload(CudaOpsTest.rand(batch * in, 1, 1.0), 0, x);
      d.upload(CudaOpsTest.rand(out * in, 2, 0.05), 0, w);
      d.upload(CudaOpsTest.rand(batch * out, 3, 0.1), 0, dy);
      float[][] dwRef = null;
      int[] carveouts = {0, 16, 32, d.smCount() / 2};
      for (int sms : carveouts) {
        Tensor dw = d.allocate(DType.FLOAT32, out, in);
        Tensor dx = d.allocate(DType.FLOAT32, batch, in);
        d.gemmSmCarveout(sms);
        d.matmul(dy, true, x, false, dw, 1f, 0f);
        d.matmul(dy, false, w, false, dx, 1f, 0f);
        d.gemmSmCarveout(0);
        float[][] got = {host(d, dw), host(d, dx)};
        if (dwRef == null) {
          dwRef = got;
        } else {
          assertCloseNormwise(dwRef[0], got[0], CudaTestSupport.FP32_TOL, "dW with " + sms + " SMs left free");
          assertCloseNormwise(dwRef[1], got[1], CudaTestSupport.FP32_TOL, "dx with " + sms + " SMs left free");
        }
        d.free(dw);
        d.free(dx);
      }
    }
  }

  @Test
  void overlappedFitWithACarveoutOnTwoGpus() {
    CudaTestSupport.assumeGpus(2);
    List<CudaFusedPathTest.RankRun> plain = LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60))) {
        return CudaFusedPathTest.trainRank(d, c, DType.FLOAT32, 4096, 65536, Trainer.AllReduceMode.OVERLAPPED, 0);
      }
    });
    List<CudaFusedPathTest.RankRun> carved = LocalLauncher.run(2, Cuda.deviceCount(), 300, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60))) {
        return CudaFusedPathTest.trainRank(d, c, DType.FLOAT32, 4096, 65536, Trainer.AllReduceMode.OVERLAPPED,
            d.smCount() / 4);
      }
    });
    assertEquals(carved.get(0).hashes(), carved.get(1).hashes(), "ranks differ at some step with a carve-out");
    assertEquals(plain.get(0).hashes().size(), carved.get(0).hashes().size(), "steps");
    assertCloseNormwise(plain.get(0).params(), carved.get(0).params(), 1e-4, "params with vs without a carve-out");
  }
}
