package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.BF16_TOL;
import static dev.sparktrainer.cuda.CudaTestSupport.FP32_TOL;
import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.GraphCaptureException;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * Note [cuBLASLt workspace] (BlasLt) on a GPU: the cuBLASLt workspace grows to the largest need of the algorithms
 * chosen so far (none while none needs any), never above the limit, and the results are the bits of a run whose
 * workspace was the limit's size (the same algorithms), and the CPU's within CudaOpsTest's tolerances.
 * The matmuls are those CudaDevice sends to cuBLASLt: linearForward with each epilogue (none, bias, ReLU, bias +
 * ReLU), the linear backward's dx = dy w and dw += dy^T x (accumulated onto nonzero values, so a call that ran
 * before asking for a larger workspace would show), and a matmul with both operands transposed, alpha and beta;
 * fp32 and bf16 inputs (bf16 linear outputs with bf16 bias), shapes from 1x1x1 to long-k ones that tend to pick
 * split-K algorithms with workspace. Each run has its own device, so its workspace starts empty (the plans, and so
 * the needs, are shared by one thread's devices: Note [matmul plan cache]). Growing during a CUDA graph capture is
 * refused.
 */
class CudaMatmulWorkspaceTest {
  static final DType F32 = DType.FLOAT32;
  static final DType BF16 = DType.BFLOAT16;
  static final long LIMIT = BlasLt.WORKSPACE_BYTES;

  @BeforeEach
  void gpu() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni(); // cuBLASLt is reached through the JNI library
  }

  /** A linear layer's matmuls: x (batch, in), w (out, in), y (batch, out). */
  record Case(String name, int batch, int in, int out) {
    @Override
    public String toString() {
      return name;
    }
  }

  static final Case[] CASES = {
      new Case("1x1x1", 1, 1, 1),
      new Case("odd 37x129x65", 37, 129, 65),
      new Case("MLP 128x784x256", 128, 784, 256),
      new Case("wide 256x512x1024", 256, 512, 1024),
      new Case("long k 64x8192x64", 64, 8192, 64), // few output tiles, long sums: split-K candidates
      new Case("long k 16x16384x16", 16, 16384, 16),
  };

  /** The ops of a case, in order (names for messages). */
  static final String[] OPS = {"linear", "linear+bias", "linear+relu", "linear+bias+relu", "dx = dy w",
      "dw += dy^T x", "c = 0.5 a^T b^T + 2 c"};

  static float[] rand(int n, long seed, double scale) {
    return CudaOpsTest.rand(n, seed, scale);
  }

  static Tensor up(Device d, DType dt, float[] data, int... shape) {
    Tensor t = d.allocate(dt, shape);
    d.upload(data, 0, t);
    return t;
  }

  /** Counts the matmuls that ran while no chosen algorithm had needed any workspace. */
  static final class ZeroNeed {
    int calls;
  }

  /** Note [cuBLASLt workspace]'s invariant after a call (CudaTestSupport.checkWorkspace). */
  static void checkWorkspace(CudaDevice gpu, String what, long arenaBefore, ZeroNeed zero) {
    if (CudaTestSupport.checkWorkspace(gpu, what, gpu.blasLtWorkspaceNeed(), gpu.blasLtWorkspaceBytes(), LIMIT, arenaBefore)) {
      zero.calls++;
    }
  }


  /**
   * The ops of one case on device d (the GPU, checked after each call when gpu is not null, or the CPU): their
   * results, in OPS order. Every output is allocated before its call.
   */
  static float[][] run(Device d, CudaDevice gpu, Case cc, DType dt, ZeroNeed zero) {
    long seed = cc.name().hashCode() * 31L + dt.ordinal();
    int nb = cc.batch();
    int in = cc.in();
    int out = cc.out();
    DType yt = dt; // linear outputs and bias in the inputs' dtype (bf16: as PyTorch's autocast linear)
    Tensor x = up(d, dt, rand(nb * in, seed, 1), nb, in);
    Tensor w = up(d, dt, rand(out * in, seed + 1, Math.sqrt(3.0 / in)), out, in);
    Tensor bias = up(d, yt, rand(out, seed + 2, 0.5), out);
    Tensor dy = up(d, dt, rand(nb * out, seed + 3, 1), nb, out);
    String what = cc + ", " + dt;
    List<float[]> res = new ArrayList<>();
    for (int e = 0; e < 4; e++) {
      Tensor y = d.allocate(yt, nb, out);
      long before = gpu == null ? 0 : gpu.arena().bytesInUse();
      d.linearForward(x, w, (e & 1) != 0 ? bias : null, (e & 2) != 0, y);
      if (gpu != null) {
        checkWorkspace(gpu, what + ": " + OPS[e], before, zero);
      }
      res.add(host(d, y));
    }
    Tensor dx = d.allocate(F32, nb, in);
    long before = gpu == null ? 0 : gpu.arena().bytesInUse();
    d.matmul(dy, false, w, false, dx, 1f, 0f);
    if (gpu != null) {
      checkWorkspace(gpu, what + ": " + OPS[4], before, zero);
    }
    res.add(host(d, dx));
    Tensor dw = up(d, F32, rand(out * in, seed + 4, 0.1), out, in);
    before = gpu == null ? 0 : gpu.arena().bytesInUse();
    d.matmul(dy, true, x, false, dw, 1f, 1f);
    if (gpu != null) {
      checkWorkspace(gpu, what + ": " + OPS[5], before, zero);
    }
    res.add(host(d, dw));
    // both operands transposed: c (in, out) = 0.5 x^T (dyT)^T + 2 c, with dyT stored (out, nb)
    Tensor c = up(d, F32, rand(in * out, seed + 5, 1), in, out);
    Tensor dyT = up(d, dt, rand(out * nb, seed + 6, 1), out, nb); // stored (out, nb): its transpose is (nb, out)
    before = gpu == null ? 0 : gpu.arena().bytesInUse();
    d.matmul(x, true, dyT, true, c, 0.5f, 2f); // (in, nb) x (nb, out)
    if (gpu != null) {
      checkWorkspace(gpu, what + ": " + OPS[6], before, zero);
    }
    res.add(host(d, c));
    return res.toArray(new float[0][]);
  }

  static int[] bits(float[] a) {
    return CudaConvWorkspaceTest.bits(a);
  }

  /**
   * On a fresh device: every case in both dtypes, checking the workspace after each call and the results against the
   * CPU; then the workspace made the limit's size and every case again: the same bits.
   */
  @Test
  void workspaceGrowsToTheChosenAlgorithmsNeedsAndKeepsTheBits() {
    try (CudaDevice gpu = new CudaDevice(0); CpuDevice cpu = new CpuDevice()) {
      assertEquals("cuBLASLt", gpu.matmulBackend());
      assertEquals(0, gpu.blasLtWorkspaceBytes(), "a new device has no cuBLASLt workspace");
      ZeroNeed zero = new ZeroNeed();
      List<float[][]> grown = new ArrayList<>();
      for (DType dt : new DType[] {F32, BF16}) {
        for (Case cc : CASES) {
          float[][] got = run(gpu, gpu, cc, dt, zero);
          float[][] ref = run(cpu, null, cc, dt, zero);
          double tol = dt == F32 ? FP32_TOL : BF16_TOL;
          for (int i = 0; i < OPS.length; i++) {
            String what = "cuBLASLt workspace: " + cc + ", " + dt + ": " + OPS[i];
            double e = CudaTestSupport.normwiseRelErr(ref[i], got[i]);
            CudaTestLog.record(what, e, tol);
            assertTrue(e <= tol, what + ": error " + e + " > " + tol);
          }
          grown.add(got);
        }
      }
      long need = gpu.blasLtWorkspaceNeed();
      long bytes = gpu.blasLtWorkspaceBytes();
      CudaTestLog.note("# cuBLASLt workspace: largest need " + need + " bytes, buffer " + bytes + " bytes (limit "
          + LIMIT + "); " + zero.calls + " matmuls ran while none had needed any");
      assertTrue(bytes <= LIMIT && bytes == CudaDevice.workspaceSize(need, LIMIT), "buffer " + bytes);

      gpu.growBlasLtWorkspace(LIMIT); // as the workspace always was before Note [cuBLASLt workspace]
      assertEquals(LIMIT, gpu.blasLtWorkspaceBytes());
      int k = 0;
      for (DType dt : new DType[] {F32, BF16}) {
        for (Case cc : CASES) {
          float[][] full = run(gpu, null, cc, dt, zero);
          float[][] lazy = grown.get(k++);
          for (int i = 0; i < OPS.length; i++) {
            assertArrayEquals(bits(full[i]), bits(lazy[i]),
                cc + ", " + dt + ": " + OPS[i] + " differs from the run with a full workspace");
          }
        }
      }
      assertEquals(LIMIT, gpu.blasLtWorkspaceBytes(), "the workspace never shrinks");
    }
  }

  /**
   * A matmul whose algorithm needs more workspace than the device has, inside a CUDA graph capture: the growth is
   * refused (GraphCaptureException, the buffer unchanged); run eagerly afterwards it grows and gives the bits of a
   * device that had grown before.
   */
  @Test
  void growingTheWorkspaceIsRefusedDuringACapture() {
    Case found = null;
    DType foundType = null;
    float[] want = null;
    try (CudaDevice first = new CudaDevice(0)) {
      search:
      for (DType dt : new DType[] {F32, BF16}) {
        for (Case cc : CASES) {
          Tensor x = up(first, dt, rand(cc.batch() * cc.in(), 1, 1), cc.batch(), cc.in());
          Tensor w = up(first, dt, rand(cc.out() * cc.in(), 2, 0.1), cc.out(), cc.in());
          Tensor y = first.allocate(F32, cc.batch(), cc.out());
          long before = first.blasLtWorkspaceNeed();
          first.matmul(x, false, w, true, y, 1f, 0f);
          if (first.blasLtWorkspaceNeed() > before) {
            found = cc;
            foundType = dt;
            want = host(first, y);
            break search;
          }
        }
      }
      assumeTrue(found != null, "no matmul of this test needs cuBLASLt workspace on this GPU");
      CudaTestLog.note("# cuBLASLt workspace growth during a capture: " + found + ", " + foundType + " needs "
          + first.blasLtWorkspaceNeed() + " bytes");
    }
    Case cc = found;
    DType dt = foundType;
    try (CudaDevice gpu = new CudaDevice(0)) {
      assertEquals("cuBLASLt", gpu.matmulBackend()); // the handle exists before the capture
      Tensor x = up(gpu, dt, rand(cc.batch() * cc.in(), 1, 1), cc.batch(), cc.in());
      Tensor w = up(gpu, dt, rand(cc.out() * cc.in(), 2, 0.1), cc.out(), cc.in());
      Tensor y = gpu.allocate(F32, cc.batch(), cc.out());
      gpu.synchronize();
      GraphCaptureException e = assertThrows(GraphCaptureException.class,
          () -> gpu.captureGraph(() -> gpu.matmul(x, false, w, true, y, 1f, 0f)));
      assertTrue(e.getMessage().contains("cuBLASLt workspace"), e.getMessage());
      assertEquals(0, gpu.blasLtWorkspaceBytes(), "nothing grew during the capture");
      gpu.matmul(x, false, w, true, y, 1f, 0f);
      assertTrue(gpu.blasLtWorkspaceBytes() > 0, "the eager call grew the workspace");
      assertEquals(CudaDevice.workspaceSize(gpu.blasLtWorkspaceNeed(), LIMIT), gpu.blasLtWorkspaceBytes());
      assertArrayEquals(bits(want), bits(host(gpu, y)), "the same bits as the device that grew first");
    }
  }
}
