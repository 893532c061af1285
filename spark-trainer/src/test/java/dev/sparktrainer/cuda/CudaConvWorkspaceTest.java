package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.GraphCaptureException;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Note [cuDNN workspace] on a GPU: the cuDNN workspace grows to the largest need of the algorithms chosen so far
 * (none while none needs any), never above the limit, and the results are the bits of a run whose workspace was
 * the limit's size (the same algorithms; with timed choice, which may take non-deterministic ones, the same values
 * within CudaConvOpsTest's tolerances), and the CPU's within those tolerances.
 * Convolutions: forward, backward data and backward filter (accumulated onto nonzero values, so a call that ran
 * before asking for a larger workspace would show), fp32 and bf16, channels-first and channels-last, on both cuDNN
 * APIs, with heuristics and with timed choice (which on the graph API runs its candidates on a trial buffer).
 * Each run has its own device, so its workspace starts empty. Growing during a CUDA graph capture is refused.
 */
class CudaConvWorkspaceTest {
  static final DType F32 = DType.FLOAT32;
  static final DType BF16 = DType.BFLOAT16;
  static final long LIMIT = CudaDevice.CUDNN_WORKSPACE_BYTES;

  @BeforeEach
  void gpu() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni(); // cuDNN is reached through the JNI library
  }

  /** x (n, c, h, w), k filters of kh x kw, geometry d (no groups). */
  record Case(String name, int n, int c, int h, int w, int k, int kh, int kw, Conv2dDesc d) {
    int[] xs() {
      return new int[] {n, c, h, w};
    }

    int[] ws() {
      return new int[] {k, c, kh, kw};
    }

    int[] ys() {
      return new int[] {n, k, d.outH(h, kh), d.outW(w, kw)};
    }

    @Override
    public String toString() {
      return name;
    }
  }

  static final Case[] CASES = {
      new Case("1x1 16->32, 7x7, batch 4", 4, 16, 7, 7, 32, 1, 1, Conv2dDesc.of(1, 0)),
      new Case("3x3 p1 32->64, 14x14, batch 8", 8, 32, 14, 14, 64, 3, 3, Conv2dDesc.of(1, 1)),
      new Case("ResNet stem 7x7 s2 p3, 3->64, 56x56, batch 2", 2, 3, 56, 56, 64, 7, 7, Conv2dDesc.of(2, 3)),
      new Case("ResNet 3x3 s2 p1, 128->128, 28x28, batch 2", 2, 128, 28, 28, 128, 3, 3, Conv2dDesc.of(2, 1)),
  };

  static Stream<Arguments> apisAndSearch() {
    List<Arguments> out = new ArrayList<>();
    for (CudaConvOpsTest.CudnnApi api : CudaConvOpsTest.CudnnApi.values()) {
      out.add(Arguments.of(api, false));
      out.add(Arguments.of(api, true));
    }
    return out.stream();
  }

  static int numel(int[] shape) {
    return Math.toIntExact(Shape.numel(shape));
  }

  /** Seeded inputs of one case, rounded to bf16 when dt is: x, w, dy, and the fp32 start of dw. */
  static float[][] inputs(Case cc, DType dt) {
    long seed = cc.name().hashCode();
    double wScale = Math.sqrt(3.0 / (cc.c() * cc.kh() * cc.kw()));
    return new float[][] {CudaConvOpsTest.as(dt, CudaConvOpsTest.uniform(numel(cc.xs()), seed, -1, 1)),
        CudaConvOpsTest.as(dt, CudaConvOpsTest.uniform(numel(cc.ws()), seed + 1, -wScale, wScale)),
        CudaConvOpsTest.as(dt, CudaConvOpsTest.uniform(numel(cc.ys()), seed + 2, -1, 1)),
        CudaConvOpsTest.uniform(numel(cc.ws()), seed + 3, -0.1, 0.1)};
  }

  /** A GPU tensor of dt holding data (logical NCHW order), stored channels-last when nhwc. */
  static Tensor upload(CudaDevice gpu, DType dt, float[] data, int[] shape, boolean nhwc) {
    Tensor t = gpu.allocate(dt, shape);
    gpu.upload(data, 0, t);
    if (!nhwc) {
      return t;
    }
    Tensor l = gpu.allocate(dt, shape);
    gpu.convertLayout(t, l, true, false);
    return l;
  }

  /** Host values of t in logical (N, C, H, W) order, whatever its layout. */
  static float[] logical(CudaDevice gpu, Tensor t) {
    if (!t.channelsLast()) {
      return host(gpu, t);
    }
    Tensor f = gpu.allocate(F32, t.shape());
    gpu.convertLayout(t, f, false, false);
    return host(gpu, f);
  }

  /** Counts the convolutions that ran while no chosen algorithm had needed any workspace. */
  static final class ZeroNeed {
    int calls;
  }

  /** Note [cuDNN workspace]'s invariant after a call (CudaTestSupport.checkWorkspace). */
  static void checkWorkspace(CudaDevice gpu, String what, long arenaBefore, ZeroNeed zero) {
    if (CudaTestSupport.checkWorkspace(gpu, what, gpu.cudnnWorkspaceNeed(), gpu.cudnnWorkspaceBytes(), LIMIT, arenaBefore)) {
      zero.calls++;
    }
  }


  /**
   * Forward y, backward data dx and backward filter dw (+= onto its start) of one case on gpu, checking the
   * workspace after each call (when check is set): their values in logical NCHW order.
   */
  static float[][] run(CudaDevice gpu, Case cc, DType dt, boolean nhwc, boolean check, ZeroNeed zero) {
    float[][] in = inputs(cc, dt);
    String what = cc + ", " + dt + (nhwc ? ", NHWC" : ", NCHW");
    Tensor x = upload(gpu, dt, in[0], cc.xs(), nhwc);
    Tensor w = upload(gpu, dt, in[1], cc.ws(), nhwc);
    Tensor dy = upload(gpu, dt, in[2], cc.ys(), nhwc);
    Tensor y = gpu.allocate(dt, cc.ys());
    Tensor dx = gpu.allocate(dt, cc.xs());
    Tensor dw = upload(gpu, F32, in[3], cc.ws(), false);
    long before = gpu.arena().bytesInUse();
    gpu.conv2dForward(x, w, null, y, cc.d());
    if (check) {
      checkWorkspace(gpu, what + ": forward", before, zero);
    }
    before = gpu.arena().bytesInUse();
    gpu.conv2dBackwardData(dy, w, dx, cc.d());
    if (check) {
      checkWorkspace(gpu, what + ": backward data", before, zero);
    }
    gpu.conv2dBackwardFilter(x, dy, dw, null, cc.d()); // may allocate a bf16 or NHWC scratch gradient
    if (check) {
      checkWorkspace(gpu, what + ": backward filter", -1, zero);
    }
    return new float[][] {logical(gpu, y), logical(gpu, dx), host(gpu, dw)};
  }

  /** The CPU's y, dx and dw (+= onto the same start) on the same (bf16-rounded) inputs. */
  static float[][] cpuReference(CpuDevice cpu, Case cc, DType dt) {
    float[][] in = inputs(cc, dt);
    Tensor x = cpu.allocate(F32, cc.xs());
    Tensor w = cpu.allocate(F32, cc.ws());
    Tensor dy = cpu.allocate(F32, cc.ys());
    Tensor dw = cpu.allocate(F32, cc.ws());
    cpu.upload(in[0], 0, x);
    cpu.upload(in[1], 0, w);
    cpu.upload(in[2], 0, dy);
    cpu.upload(in[3], 0, dw);
    Tensor y = cpu.allocate(F32, cc.ys());
    Tensor dx = cpu.allocate(F32, cc.xs());
    cpu.conv2dForward(x, w, null, y, cc.d());
    cpu.conv2dBackwardData(dy, w, dx, cc.d());
    cpu.conv2dBackwardFilter(x, dy, dw, null, cc.d());
    return new float[][] {host(cpu, y), host(cpu, dx), host(cpu, dw)};
  }

  static int[] bits(float[] a) {
    int[] b = new int[a.length];
    for (int i = 0; i < a.length; i++) {
      b[i] = Float.floatToRawIntBits(a[i]);
    }
    return b;
  }

  /**
   * On a fresh device: every case in both dtypes and layouts, checking the workspace after each call and the
   * results against the CPU; then the workspace made the limit's size and every case again: the same bits (with
   * heuristics; within the tolerances with timed choice).
   */
  @ParameterizedTest(name = "{0}, timed {1}")
  @MethodSource("apisAndSearch")
  void workspaceGrowsToTheChosenAlgorithmsNeedsAndKeepsTheBits(CudaConvOpsTest.CudnnApi api, boolean timed) {
    String[] dirs = {"forward y", "backward data dx", "backward filter dw (+=)"};
    try (CudaDevice gpu = new CudaDevice(0); CpuDevice cpu = new CpuDevice()) {
      api.use(gpu);
      gpu.useCudnnBenchmark(timed);
      assertEquals(0, gpu.cudnnWorkspaceBytes(), "a new device has no cuDNN workspace");
      ZeroNeed zero = new ZeroNeed();
      List<float[][]> grown = new ArrayList<>();
      for (DType dt : new DType[] {F32, BF16}) {
        for (boolean nhwc : new boolean[] {false, true}) {
          for (Case cc : CASES) {
            float[][] got = run(gpu, cc, dt, nhwc, true, zero);
            float[][] ref = cpuReference(cpu, cc, dt);
            double tol = dt == F32 ? CudaConvOpsTest.CONV_FP32_TOL : CudaConvOpsTest.CONV_BF16_TOL;
            for (int i = 0; i < 3; i++) {
              String what = "workspace " + api + (timed ? " timed" : "") + ": " + cc + ", " + dt
                  + (nhwc ? ", NHWC" : ", NCHW") + ": " + dirs[i];
              double e = CudaConvOpsTest.err(ref[i], got[i], dt == F32 ? 1 : 0);
              CudaTestLog.record(what, e, tol);
              assertTrue(e <= tol, what + ": error " + e + " > " + tol);
            }
            grown.add(got);
          }
        }
      }
      long need = gpu.cudnnWorkspaceNeed();
      long bytes = gpu.cudnnWorkspaceBytes();
      CudaTestLog.note("# cuDNN workspace, " + api + (timed ? ", timed" : ", heuristics") + ": largest need " + need
          + " bytes, buffer " + bytes + " bytes (limit " + LIMIT + "); " + zero.calls
          + " convolutions ran while none had needed any");
      assertTrue(bytes <= LIMIT && bytes == CudaDevice.workspaceSize(need, LIMIT), "buffer " + bytes);

      gpu.growCudnnWorkspace(LIMIT); // as the workspace always was before Note [cuDNN workspace]
      assertEquals(LIMIT, gpu.cudnnWorkspaceBytes());
      int k = 0;
      for (DType dt : new DType[] {F32, BF16}) {
        for (boolean nhwc : new boolean[] {false, true}) {
          for (Case cc : CASES) {
            float[][] full = run(gpu, cc, dt, nhwc, false, zero);
            float[][] lazy = grown.get(k++);
            for (int i = 0; i < 3; i++) {
              String what = api + (timed ? " timed" : "") + ": " + cc + ", " + dt + (nhwc ? ", NHWC" : ", NCHW")
                  + ": " + dirs[i] + " differs from the run with a full workspace";
              if (!timed) {
                assertArrayEquals(bits(full[i]), bits(lazy[i]), what);
              } else { // timed choice may take a non-deterministic algorithm: the same one, but not the same bits
                double tol = dt == F32 ? CudaConvOpsTest.CONV_FP32_TOL : CudaConvOpsTest.CONV_BF16_TOL;
                double e = CudaConvOpsTest.err(full[i], lazy[i], dt == F32 ? 1 : 0);
                assertTrue(e <= tol, what + ": error " + e + " > " + tol);
              }
            }
          }
        }
      }
      assertEquals(LIMIT, gpu.cudnnWorkspaceBytes(), "the workspace never shrinks");
    }
  }

  /**
   * A convolution whose algorithm needs more workspace than the device has, inside a CUDA graph capture: the growth
   * is refused (GraphCaptureException, the buffer unchanged); run eagerly afterwards it grows and gives the bits of
   * a device that had grown before. The legacy API, whose plans (and so the needs) one thread's devices share.
   */
  @Test
  void growingTheWorkspaceIsRefusedDuringACapture() {
    try (CudaDevice first = new CudaDevice(0)) {
      first.useCudnnGraph(false);
      first.useCudnnBenchmark(false);
      Case found = null;
      float[] want = null;
      for (Case cc : CASES) {
        float[][] in = inputs(cc, F32);
        Tensor x = upload(first, F32, in[0], cc.xs(), false);
        Tensor w = upload(first, F32, in[1], cc.ws(), false);
        Tensor y = first.allocate(F32, cc.ys());
        long before = first.cudnnWorkspaceNeed();
        first.conv2dForward(x, w, null, y, cc.d());
        if (first.cudnnWorkspaceNeed() > before) {
          found = cc;
          want = host(first, y);
          break;
        }
      }
      assumeTrue(found != null, "no forward convolution of this test needs cuDNN workspace on this GPU");
      CudaTestLog.note("# cuDNN workspace growth during a capture: " + found + " needs "
          + first.cudnnWorkspaceNeed() + " bytes");
      Case cc = found;
      try (CudaDevice gpu = new CudaDevice(0)) {
        gpu.useCudnnGraph(false);
        gpu.useCudnnBenchmark(false);
        gpu.cudnn(); // the handle exists before the capture
        float[][] in = inputs(cc, F32);
        Tensor x = upload(gpu, F32, in[0], cc.xs(), false);
        Tensor w = upload(gpu, F32, in[1], cc.ws(), false);
        Tensor y = gpu.allocate(F32, cc.ys());
        gpu.synchronize();
        GraphCaptureException e = assertThrows(GraphCaptureException.class,
            () -> gpu.captureGraph(() -> gpu.conv2dForward(x, w, null, y, cc.d())));
        assertTrue(e.getMessage().contains("cuDNN workspace"), e.getMessage());
        assertEquals(0, gpu.cudnnWorkspaceBytes(), "nothing grew during the capture");
        gpu.conv2dForward(x, w, null, y, cc.d());
        assertTrue(gpu.cudnnWorkspaceBytes() > 0, "the eager call grew the workspace");
        assertArrayEquals(bits(want), bits(host(gpu, y)), "the same bits as the device that grew first");
      }
    }
  }
}
