package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static dev.sparktrainer.cuda.CudaTestSupport.maxAbs;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The convolutional ops of {@link CudaDevice} (convolution on cuDNN, pooling, batch normalisation) against the
 * CPU engine, element by element (both channels-first; pooling also channels-last), fp32 and bf16, on seeded
 * random inputs over a table
 * of geometries: stride 1/2, padding 0/1/3, dilation 2, groups 2 and depthwise, odd and non-square sizes,
 * 1x1, 3x3, 5x3 and 7x7 kernels (the ResNet stem 7x7/2 pad 3 at 224x224), with and without bias, batch 1,
 * 2, 3 and 5. Every convolution test runs through both cuDNN APIs (legacy and graph, CudaDevice.CUDNN_API) with
 * the same tolerances.
 *
 * <p>The dtype contract tested (Device's conv section, GPU side): conv2dForward x, w, y all FLOAT32 or all
 * BFLOAT16, bias FLOAT32 or null; conv2dBackwardData dy, w, dx one dtype; conv2dBackwardFilter x, dy one
 * dtype, dw and dbias FLOAT32 and accumulated; pools one dtype; batch norm x, y, dy, dx one dtype, every
 * per-channel tensor FLOAT32, dgamma/dbeta accumulated. Anything else, and any shape that does not agree,
 * is an IllegalArgumentException, as on the CPU.
 *
 * <p>Error metric: {@code err = max_i |gpu_i - ref_i| / max(floor, max_i |ref_i|)} (normwise; elements of a
 * convolution or of a sum can cancel to ~0 while their error scales with the inputs). bf16 runs are compared
 * with the CPU's fp32 result on the bf16-rounded inputs, so the error measured is the GPU's (the rounding of
 * the result to bf16 and the order of its fp32 sums), not the input rounding. Tolerances, with the reasons:
 * <ul>
 *   <li>conv fp32: {@value #CONV_FP32_TOL} with floor 1, i.e. max abs diff <= 1e-4 max(1, max|ref|). cuDNN
 *       may pick other algorithms than im2col + GEMM (implicit GEMM, Winograd, FFT; TF32 is off in the
 *       default {@link CudaDevice.Options}): direct sums agree to ~1e-6, Winograd/FFT to ~1e-5.
 *   <li>conv bf16: {@value #CONV_BF16_TOL}: bf16 keeps 8 significant bits, so rounding y or dx once costs
 *       up to 2^-9 = 2e-3 of an element; the products are summed in fp32. A wrong tap, a swapped axis or a
 *       sum in bf16 over C*kh*kw terms shows far above that.
 *   <li>pooling fp32: max-pool forward is a selection, bit-exact; every other pool output is a sum of at
 *       most n terms (n = kh*kw, forward, or the windows covering a pixel, backward) summed in some order:
 *       |err| <= n u sum|x_i| with u = 2^-24. Inputs of average pooling are positive (in [1, 3]), so that is
 *       <= n u |ref|: tolerance max(1e-5, 2 n u), 2e-5 for a 13x13 global pool.
 *   <li>batch norm fp32: {@value #BN_FP32_TOL}. Statistics are sums over M = N*H*W values in fp32 (the CPU
 *       sums in double); blocked or tree sums have errors ~sqrt(M) u relative to the sum's scale, <= 5e-6
 *       for M = 6272. Channel means are in [-0.5, 0.5] and standard deviations in [0.75, 2], so even a
 *       one-pass variance (E[x^2] - mean^2) loses at most a factor 1.5 to cancellation.
 *   <li>pool/batch-norm outputs in bf16: {@value #BF16_OUT_TOL} (rounding the result, 2^-9, plus fp32
 *       statistics); fp32 outputs computed from bf16 inputs (saved and running statistics, dgamma, dbeta):
 *       {@value #BF16_STATS_TOL} (the inputs are exact bf16 values and are summed in fp32, so only the order
 *       differs; the margin allows intermediates kept in bf16).
 * </ul>
 * Max-pool backward: the tolerance tests draw inputs so that no window has a tied maximum (written when cuDNN
 * pooled, which may route a tie elsewhere); pooling now runs on the project's kernels, which route ties to the
 * first maximum as the CPU does, and {@code poolingMatchesTheCpuBitForBitInBothLayouts} checks ties, +0/-0,
 * infinities and NaNs bit for bit in both layouts (Note [pooling kernels]). Every measured error goes to the GPU
 * report (-Dsparktrainer.gpu.report).
 */
class CudaConvOpsTest {
  static final double CONV_FP32_TOL = 1e-4;
  static final double CONV_BF16_TOL = 2e-2;
  static final double BN_FP32_TOL = 1e-5;
  static final double BF16_OUT_TOL = 1e-2;
  static final double BF16_STATS_TOL = 1e-3;
  static final double POOL_FP32_TOL = 1e-5;
  static final double U = 0x1p-24; // unit roundoff of fp32
  static final float BN_MOMENTUM = 0.1f;
  static final float BN_EPS = 1e-5f;
  static final DType F32 = DType.FLOAT32;
  static final DType BF16 = DType.BFLOAT16;
  static CudaDevice gpu;
  static CpuDevice cpu;

  /** Per test, so that each one is reported as skipped (with the reason) on a machine without a GPU. */
  @BeforeEach
  void open() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni(); // cuDNN is reached through the JNI library
    if (gpu == null) {
      gpu = new CudaDevice(0);
      cpu = new CpuDevice();
      CudaTestLog.note("# CudaConvOpsTest on " + Cuda.deviceName(0) + ", cuDNN " + gpu.cudnn().version()
          + ", TF32 " + gpu.options().tf32() + ", CPU BLAS " + cpu.blasName());
    }
    gpu.useCudnnGraph("graph".equals(CudaDevice.CUDNN_API)); // the process's API unless a test picks one
  }

  @AfterAll
  static void close() {
    if (gpu != null) {
      CudaTestLog.note("# CudaConvOpsTest: convolutions the cuDNN graph API left to the legacy API: "
          + gpu.cudnnGraphFallbacks());
      gpu.close();
      cpu.close();
      gpu = null;
    }
  }

  // ---------------------------------------------------------------- helpers

  /** n values uniform in [lo, hi), from the seed. */
  static float[] uniform(int n, long seed, double lo, double hi) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] a = new float[n];
    for (int i = 0; i < n; i++) {
      a[i] = (float) (lo + r.nextDouble() * (hi - lo));
    }
    return a;
  }

  /** A copy rounded to bf16 when dt is BFLOAT16 (the values a bf16 tensor holds after upload). */
  static float[] as(DType dt, float[] a) {
    if (dt != BF16) {
      return a;
    }
    float[] r = new float[a.length];
    for (int i = 0; i < a.length; i++) {
      r[i] = CpuDevice.roundBf16(a[i]);
    }
    return r;
  }

  /** A FLOAT32 CPU tensor holding data. */
  static Tensor cpuT(float[] data, int... shape) {
    Tensor t = cpu.allocate(F32, shape);
    cpu.upload(data, 0, t);
    return t;
  }

  /** A GPU tensor of dtype dt holding data (rounded to bf16 by the upload when dt is BFLOAT16). */
  static Tensor gpuT(DType dt, float[] data, int... shape) {
    Tensor t = gpu.allocate(dt, shape);
    gpu.upload(data, 0, t);
    return t;
  }

  /** A GPU tensor filled with a value that a correct op overwrites (catches "accumulated instead of written"). */
  static Tensor gpuDirty(DType dt, int... shape) {
    Tensor t = gpu.allocate(dt, shape);
    gpu.fill(t, 3.25f);
    return t;
  }

  static int numel(int[] shape) {
    return Math.toIntExact(Shape.numel(shape));
  }

  /** max |act - ref| / max(floor, max |ref|); NaN or Inf in act gives +Inf. */
  static double err(float[] ref, float[] act, double floor) {
    double scale = Math.max(Math.max(floor, maxAbs(ref)), 1e-30);
    double worst = 0;
    for (int i = 0; i < ref.length; i++) {
      double d = Math.abs((double) act[i] - ref[i]);
      if (!Double.isFinite(d)) {
        return Double.POSITIVE_INFINITY;
      }
      worst = Math.max(worst, d);
    }
    return worst / scale;
  }

  static void check(String what, float[] ref, float[] act, double tol, double floor) {
    assertEquals(ref.length, act.length, what + ": lengths differ");
    double e = err(ref, act, floor);
    CudaTestLog.record(what, e, tol);
    assertTrue(e <= tol, what + ": error " + e + " > " + tol + " (max |ref| " + maxAbs(ref) + ")");
  }

  static void check(String what, Tensor ref, Tensor act, double tol) {
    check(what, host(cpu, ref), host(gpu, act), tol, 0);
  }

  static void assertIae(String what, Executable call) {
    assertThrows(IllegalArgumentException.class, call, what + " must throw IllegalArgumentException");
  }

  static Stream<Arguments> byDtype(List<?> cases) {
    List<Arguments> out = new ArrayList<>();
    for (Object c : cases) {
      out.add(Arguments.of(c, F32));
      out.add(Arguments.of(c, BF16));
    }
    return out.stream();
  }

  /** The two implementations of the convolutions (CudaDevice.CUDNN_API); every convolution test runs on both. */
  enum CudnnApi {
    LEGACY,
    GRAPH;

    /** Makes gpu's convolutions use this API. */
    void use(CudaDevice gpu) {
      gpu.useCudnnGraph(this == GRAPH);
    }
  }

  /** Each argument list of args once per API (the API last). */
  static Stream<Arguments> byApi(Stream<Arguments> args) {
    return args.flatMap(a -> Stream.of(CudnnApi.values()).map(api -> {
      Object[] with = java.util.Arrays.copyOf(a.get(), a.get().length + 1);
      with[with.length - 1] = api;
      return Arguments.of(with);
    }));
  }

  // ---------------------------------------------------------------- convolution

  /** x (n, c, h, w), filters k of kh x kw, geometry d. */
  record ConvCase(String name, int n, int c, int h, int w, int k, int kh, int kw, Conv2dDesc d, boolean bias) {
    int[] xShape() {
      return new int[] {n, c, h, w};
    }

    int[] wShape() {
      return new int[] {k, c / d.groups(), kh, kw};
    }

    int[] yShape() {
      return new int[] {n, k, d.outH(h, kh), d.outW(w, kw)};
    }

    int fanIn() {
      return c / d.groups() * kh * kw;
    }

    @Override
    public String toString() {
      return name;
    }
  }

  static Conv2dDesc conv(int stride, int pad, int dilation, int groups) {
    return new Conv2dDesc(stride, stride, pad, pad, dilation, dilation, groups);
  }

  static List<ConvCase> convCases() {
    return List.of(
        new ConvCase("3x3 s1 p1 bias, batch 5, 13x13", 5, 3, 13, 13, 8, 3, 3, conv(1, 1, 1, 1), true),
        new ConvCase("3x3 s2 p0, batch 1, odd 7x9", 1, 4, 7, 9, 6, 3, 3, conv(2, 0, 1, 1), false),
        new ConvCase("ResNet stem 7x7 s2 p3, 224x224, batch 2", 2, 3, 224, 224, 64, 7, 7, conv(2, 3, 1, 1), false),
        new ConvCase("7x7 s2 p3 bias, odd 13x13, batch 5", 5, 3, 13, 13, 16, 7, 7, conv(2, 3, 1, 1), true),
        new ConvCase("1x1 s1 p0 (bottleneck), batch 5", 5, 16, 7, 7, 32, 1, 1, conv(1, 0, 1, 1), false),
        new ConvCase("1x1 s2 p0 (downsample shortcut), batch 3, 13x13",
            3, 8, 13, 13, 16, 1, 1, conv(2, 0, 1, 1), false),
        new ConvCase("1x1 s1 bias, batch 1, 7x9", 1, 5, 7, 9, 3, 1, 1, conv(1, 0, 1, 1), true),
        new ConvCase("3x3 s1 p3 (pad > kernel / 2), batch 1, 5x5", 1, 2, 5, 5, 3, 3, 3, conv(1, 3, 1, 1), true),
        new ConvCase("3x3 dilation 2 p2 bias, batch 2, 11x10", 2, 4, 11, 10, 5, 3, 3, conv(1, 2, 2, 1), true),
        new ConvCase("3x3 dilation 2 s2 p1, batch 3, 13x13", 3, 4, 13, 13, 4, 3, 3, conv(2, 1, 2, 1), false),
        new ConvCase("3x3 groups 2 p1 bias, batch 2, 9x7", 2, 6, 9, 7, 4, 3, 3, conv(1, 1, 1, 2), true),
        new ConvCase("3x3 depthwise (groups = C = 8) p1 bias, batch 5, 13x13",
            5, 8, 13, 13, 8, 3, 3, conv(1, 1, 1, 8), true),
        new ConvCase("3x3 depthwise x2 (groups 4, K = 8) s2 p1, batch 2, 7x9",
            2, 4, 7, 9, 8, 3, 3, conv(2, 1, 1, 4), false),
        new ConvCase("5x3 kernel, stride 2x1, pad 1x0, batch 2, 9x8", 2, 3, 9, 8, 4, 5, 3,
            new Conv2dDesc(2, 1, 1, 0, 1, 1, 1), true),
        new ConvCase("Fashion-MNIST CNN conv2 32->64 3x3 p1 bias, batch 5, 14x14",
            5, 32, 14, 14, 64, 3, 3, conv(1, 1, 1, 1), true),
        new ConvCase("ResNet 3x3 64->64 p1, batch 2, 56x56", 2, 64, 56, 56, 64, 3, 3, conv(1, 1, 1, 1), false),
        new ConvCase("ResNet 3x3 128->128 s2 p1, batch 2, 28x28", 2, 128, 28, 28, 128, 3, 3, conv(2, 1, 1, 1), false));
  }

  static Stream<Arguments> convCasesByDtypeAndApi() {
    return byApi(byDtype(convCases()));
  }

  /**
   * Forward (y overwritten), backward data (dx overwritten) and backward filter (dw, dbias accumulated onto
   * nonzero values) of one geometry, against the CPU, through one cuDNN API. On the graph API the ResNet
   * geometries (what the graph API is for) must find engines in every direction; any other shape that falls
   * back to the legacy API is listed in the GPU report.
   */
  @ParameterizedTest(name = "{0}, {1}, {2}")
  @MethodSource("convCasesByDtypeAndApi")
  void conv2dMatchesTheCpu(ConvCase cc, DType dt, CudnnApi api) {
    api.use(gpu);
    java.util.Set<String> fellBack = new java.util.HashSet<>(gpu.cudnnGraphFallbacks());
    long seed = cc.name().hashCode();
    int[] xs = cc.xShape();
    int[] ws = cc.wShape();
    int[] ys = cc.yShape();
    double wScale = Math.sqrt(3.0 / cc.fanIn()); // uniform with variance 1 / fan_in: outputs of order 1
    float[] x = as(dt, uniform(numel(xs), seed, -1, 1));
    float[] w = as(dt, uniform(numel(ws), seed + 1, -wScale, wScale));
    float[] b = cc.bias() ? uniform(cc.k(), seed + 2, -0.5, 0.5) : null; // always fp32
    float[] dy = as(dt, uniform(numel(ys), seed + 3, -1, 1));
    float[] dw0 = uniform(numel(ws), seed + 4, -0.1, 0.1);
    float[] db0 = uniform(cc.k(), seed + 5, -0.1, 0.1);
    double tol = dt == F32 ? CONV_FP32_TOL : CONV_BF16_TOL;
    double floor = dt == F32 ? 1 : 0;
    String tag = "conv2d " + cc + ", " + dt + ", " + api;

    Tensor cx = cpuT(x, xs);
    Tensor cw = cpuT(w, ws);
    Tensor cb = b == null ? null : cpuT(b, cc.k());
    Tensor cy = cpu.allocate(F32, ys);
    cpu.conv2dForward(cx, cw, cb, cy, cc.d());
    Tensor gx = gpuT(dt, x, xs);
    Tensor gw = gpuT(dt, w, ws);
    Tensor gb = b == null ? null : gpuT(F32, b, cc.k());
    Tensor gy = gpuDirty(dt, ys);
    gpu.conv2dForward(gx, gw, gb, gy, cc.d());
    assertArrayEquals(ys, gy.shape());
    check(tag + ": forward y", host(cpu, cy), host(gpu, gy), tol, floor);

    Tensor cdy = cpuT(dy, ys);
    Tensor cdx = cpu.allocate(F32, xs);
    cpu.conv2dBackwardData(cdy, cw, cdx, cc.d());
    Tensor gdy = gpuT(dt, dy, ys);
    Tensor gdx = gpuDirty(dt, xs);
    gpu.conv2dBackwardData(gdy, gw, gdx, cc.d());
    check(tag + ": backward data dx", host(cpu, cdx), host(gpu, gdx), tol, floor);

    Tensor cdw = cpuT(dw0, ws);
    Tensor cdb = cc.bias() ? cpuT(db0, cc.k()) : null;
    cpu.conv2dBackwardFilter(cx, cdy, cdw, cdb, cc.d());
    Tensor gdw = gpuT(F32, dw0, ws);
    Tensor gdb = cc.bias() ? gpuT(F32, db0, cc.k()) : null;
    gpu.conv2dBackwardFilter(gx, gdy, gdw, gdb, cc.d());
    check(tag + ": backward filter dw (+= onto nonzero)", host(cpu, cdw), host(gpu, gdw), tol, floor);
    if (cc.bias()) {
      check(tag + ": backward filter dbias (+= onto nonzero)", host(cpu, cdb), host(gpu, gdb), tol, floor);
    }
    java.util.Set<String> added = new java.util.TreeSet<>(gpu.cudnnGraphFallbacks());
    added.removeAll(fellBack);
    if (!added.isEmpty()) {
      CudaTestLog.note("# " + tag + ": on the legacy API: " + added);
    }
    if (api == CudnnApi.GRAPH && cc.name().startsWith("ResNet")) {
      assertTrue(added.isEmpty(), tag + ": the cuDNN graph API found no engine for " + added);
    }
  }

  /** dw and dbias accumulate: two calls from zero give twice one call. */
  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("dtypesAndApis")
  void backwardFilterAccumulates(DType dt, CudnnApi api) {
    api.use(gpu);
    for (ConvCase cc : List.of(convCases().get(0), convCases().get(11), convCases().get(14))) {
      long seed = 77 + cc.name().hashCode();
      Tensor gx = gpuT(dt, uniform(numel(cc.xShape()), seed, -1, 1), cc.xShape());
      Tensor gdy = gpuT(dt, uniform(numel(cc.yShape()), seed + 1, -1, 1), cc.yShape());
      Tensor dw = gpu.allocate(F32, cc.wShape());
      Tensor db = gpu.allocate(F32, cc.k());
      gpu.conv2dBackwardFilter(gx, gdy, dw, db, cc.d());
      float[] once = host(gpu, dw);
      float[] onceB = host(gpu, db);
      gpu.conv2dBackwardFilter(gx, gdy, dw, db, cc.d());
      float[] twice = host(gpu, dw);
      float[] twiceB = host(gpu, db);
      for (int i = 0; i < once.length; i++) {
        once[i] *= 2;
      }
      for (int i = 0; i < onceB.length; i++) {
        onceB[i] *= 2;
      }
      // The same call twice: equal up to the order of a nondeterministic algorithm's atomics (fp32 dw) or one
      // bf16 rounding of an intermediate; "overwritten instead of added" would give an error of 0.5.
      double tol = dt == F32 ? 1e-5 : BF16_OUT_TOL;
      String tag = "conv2dBackwardFilter " + cc + ", " + dt + ", " + api;
      check(tag + ": dw after 2 calls = 2 x one call", once, twice, tol, 0);
      check(tag + ": dbias after 2 calls = 2 x one call", onceB, twiceB, tol, 0);
    }
  }

  static Stream<DType> dtypes() {
    return Stream.of(F32, BF16);
  }

  static Stream<Arguments> dtypesAndApis() {
    return byApi(dtypes().map(dt -> Arguments.of(dt)));
  }

  /**
   * The model's layout: weights and their gradients are views at aligned offsets into one flat buffer (and
   * the bf16 weights views into the bf16 mirror), activations separate buffers.
   */
  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("dtypesAndApis")
  void viewsIntoFlatBuffersAsTheModelLaysThemOut(DType dt, CudnnApi api) {
    api.use(gpu);
    ConvCase cc = new ConvCase("3x3 p1 bias, views", 3, 5, 9, 11, 7, 3, 3, conv(1, 1, 1, 1), true);
    int wn = numel(cc.wShape());
    int wOff = 64;
    int bOff = wOff + (wn + 63) / 64 * 64;
    int total = bOff + 64;
    float[] flat = uniform(total, 5, -0.3, 0.3);
    float[] x = as(dt, uniform(numel(cc.xShape()), 6, -1, 1));
    float[] dy = as(dt, uniform(numel(cc.yShape()), 7, -1, 1));
    float[] w = as(dt, java.util.Arrays.copyOfRange(flat, wOff, wOff + wn));
    float[] b = java.util.Arrays.copyOfRange(flat, bOff, bOff + cc.k());

    Tensor params = gpuT(F32, flat, total);
    Tensor mirror = gpuT(dt, flat, total); // bf16: the mirror; fp32: the parameters themselves
    Tensor grads = gpu.allocate(F32, total);
    Tensor gw = mirror.view(wOff, cc.wShape());
    Tensor gb = params.view(bOff, cc.k());
    Tensor gdw = grads.view(wOff, cc.wShape());
    Tensor gdb = grads.view(bOff, cc.k());
    Tensor gx = gpuT(dt, x, cc.xShape());
    Tensor gy = gpuDirty(dt, cc.yShape());
    Tensor gdy = gpuT(dt, dy, cc.yShape());
    Tensor gdx = gpuDirty(dt, cc.xShape());
    gpu.conv2dForward(gx, gw, gb, gy, cc.d());
    gpu.conv2dBackwardData(gdy, gw, gdx, cc.d());
    gpu.conv2dBackwardFilter(gx, gdy, gdw, gdb, cc.d());

    Tensor cx = cpuT(x, cc.xShape());
    Tensor cw = cpuT(w, cc.wShape());
    Tensor cb = cpuT(b, cc.k());
    Tensor cy = cpu.allocate(F32, cc.yShape());
    Tensor cdy = cpuT(dy, cc.yShape());
    Tensor cdx = cpu.allocate(F32, cc.xShape());
    Tensor cdw = cpu.allocate(F32, cc.wShape());
    Tensor cdb = cpu.allocate(F32, cc.k());
    cpu.conv2dForward(cx, cw, cb, cy, cc.d());
    cpu.conv2dBackwardData(cdy, cw, cdx, cc.d());
    cpu.conv2dBackwardFilter(cx, cdy, cdw, cdb, cc.d());
    double tol = dt == F32 ? CONV_FP32_TOL : CONV_BF16_TOL;
    double floor = dt == F32 ? 1 : 0;
    String tag = "conv2d on views into flat buffers, " + dt + ", " + api;
    check(tag + ": y", host(cpu, cy), host(gpu, gy), tol, floor);
    check(tag + ": dx", host(cpu, cdx), host(gpu, gdx), tol, floor);
    check(tag + ": dw", host(cpu, cdw), host(gpu, gdw), tol, floor);
    check(tag + ": dbias", host(cpu, cdb), host(gpu, gdb), tol, floor);
    float[] g = host(gpu, grads);
    for (int i = 0; i < total; i++) {
      boolean inW = i >= wOff && i < wOff + wn;
      boolean inB = i >= bOff && i < bOff + cc.k();
      if (!inW && !inB) {
        assertEquals(0f, g[i], 0f, "gradient buffer written outside dw/dbias at " + i);
      }
    }
    assertArrayEquals(as(dt, flat), host(gpu, mirror), "the weights must not be written");
  }

  // ---------------------------------------------------------------- pooling

  /** x (n, c, h, w) pooled with d. */
  record PoolCase(String name, int n, int c, int h, int w, Pool2dDesc d) {
    int[] xShape() {
      return new int[] {n, c, h, w};
    }

    int[] yShape() {
      return new int[] {n, c, d.outH(h), d.outW(w)};
    }

    /** The most dy values that land on one input pixel in the backward. */
    int overlap() {
      return ceilDiv(d.kernelH(), d.strideH()) * ceilDiv(d.kernelW(), d.strideW());
    }

    @Override
    public String toString() {
      return name;
    }
  }

  static int ceilDiv(int a, int b) {
    return (a + b - 1) / b;
  }

  static List<PoolCase> maxPoolCases() {
    return List.of(
        new PoolCase("2x2 s2 (Fashion-MNIST CNN), batch 5, 28x28", 5, 32, 28, 28, Pool2dDesc.of(2, 2, 0)),
        new PoolCase("2x2 s2, batch 1, odd 7x9 (floor)", 1, 3, 7, 9, Pool2dDesc.of(2, 2, 0)),
        new PoolCase("ResNet 3x3 s2 p1, batch 2, 112x112", 2, 64, 112, 112, Pool2dDesc.of(3, 2, 1)),
        new PoolCase("3x3 s2 p1, batch 5, odd 13x13", 5, 4, 13, 13, Pool2dDesc.of(3, 2, 1)),
        new PoolCase("3x3 s1 p1 (overlapping), batch 3, 7x9", 3, 4, 7, 9, Pool2dDesc.of(3, 1, 1)),
        new PoolCase("3x2 kernel, stride 2x1, pad 1x0, batch 2, 9x8", 2, 3, 9, 8, new Pool2dDesc(3, 2, 2, 1, 1, 0)));
  }

  static List<PoolCase> avgPoolCases() {
    return List.of(
        new PoolCase("2x2 s2, batch 5, 28x28", 5, 8, 28, 28, Pool2dDesc.of(2, 2, 0)),
        new PoolCase("3x3 s2 p1 (padding counted), batch 2, odd 13x13", 2, 4, 13, 13, Pool2dDesc.of(3, 2, 1)),
        new PoolCase("3x3 s1 p1, batch 1, 7x9", 1, 3, 7, 9, Pool2dDesc.of(3, 1, 1)),
        new PoolCase("global 7x7 (ResNet-50 head: 2048 channels), batch 2",
            2, 2048, 7, 7, new Pool2dDesc(7, 7, 1, 1, 0, 0)),
        new PoolCase("global 13x9, batch 5", 5, 6, 13, 9, new Pool2dDesc(13, 9, 1, 1, 0, 0)),
        new PoolCase("3x2 kernel, stride 1x2, pad 1x1, batch 3, 9x8", 3, 2, 9, 8, new Pool2dDesc(3, 2, 1, 2, 1, 1)));
  }

  static Stream<Arguments> maxPoolCasesByDtype() {
    return byDtype(maxPoolCases());
  }

  static Stream<Arguments> avgPoolCasesByDtype() {
    return byDtype(avgPoolCases());
  }

  /**
   * Values in [-1, 1) (bf16-rounded for bf16) such that no pooling window has a tied maximum: tied values
   * are drawn again until every window's maximum is unique.
   */
  static float[] untiedForMaxPool(PoolCase pc, DType dt, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] x = new float[numel(pc.xShape())];
    for (int i = 0; i < x.length; i++) {
      x[i] = drawForMax(r, dt);
    }
    Pool2dDesc d = pc.d();
    int h = pc.h();
    int w = pc.w();
    int oh = d.outH(h);
    int ow = d.outW(w);
    for (int round = 0; ; round++) {
      boolean changed = false;
      for (int pl = 0; pl < pc.n() * pc.c(); pl++) {
        int base = pl * h * w;
        for (int p = 0; p < oh; p++) {
          for (int q = 0; q < ow; q++) {
            int hs = Math.max(0, p * d.strideH() - d.padH());
            int he = Math.min(h, p * d.strideH() - d.padH() + d.kernelH());
            int ws = Math.max(0, q * d.strideW() - d.padW());
            int we = Math.min(w, q * d.strideW() - d.padW() + d.kernelW());
            float m = Float.NEGATIVE_INFINITY;
            for (int i = hs; i < he; i++) {
              for (int j = ws; j < we; j++) {
                m = Math.max(m, x[base + i * w + j]);
              }
            }
            boolean seen = false;
            for (int i = hs; i < he; i++) {
              for (int j = ws; j < we; j++) {
                if (x[base + i * w + j] == m) {
                  if (seen) {
                    x[base + i * w + j] = drawForMax(r, dt);
                    changed = true;
                  }
                  seen = true;
                }
              }
            }
          }
        }
      }
      if (!changed) {
        return x;
      }
      if (round > 1000) {
        throw new IllegalStateException("could not draw inputs without tied maxima for " + pc);
      }
    }
  }

  private static float drawForMax(SplittableRandom r, DType dt) {
    float v = (float) (r.nextDouble() * 2 - 1);
    return dt == BF16 ? CpuDevice.roundBf16(v) : v;
  }

  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("maxPoolCasesByDtype")
  void maxPoolMatchesTheCpu(PoolCase pc, DType dt) {
    long seed = pc.name().hashCode();
    float[] x = untiedForMaxPool(pc, dt, seed);
    float[] dy = as(dt, uniform(numel(pc.yShape()), seed + 1, -1, 1));
    String tag = "maxPool2d " + pc + ", " + dt;
    Tensor cx = cpuT(x, pc.xShape());
    Tensor cy = cpu.allocate(F32, pc.yShape());
    Tensor cdy = cpuT(dy, pc.yShape());
    Tensor cdx = cpu.allocate(F32, pc.xShape());
    cpu.maxPool2dForward(cx, cy, pc.d());
    cpu.maxPool2dBackward(cx, cy, cdy, cdx, pc.d());
    Tensor gx = gpuT(dt, x, pc.xShape());
    Tensor gy = gpuDirty(dt, pc.yShape());
    Tensor gdy = gpuT(dt, dy, pc.yShape());
    Tensor gdx = gpuDirty(dt, pc.xShape());
    gpu.maxPool2dForward(gx, gy, pc.d());
    gpu.maxPool2dBackward(gx, gy, gdy, gdx, pc.d());
    assertArrayEquals(pc.yShape(), gy.shape());
    // A selection of input values: bit-exact in either dtype.
    check(tag + ": forward (bit-exact)", host(cpu, cy), host(gpu, gy), 0, 0);
    // dx: at most overlap() dy values summed per pixel (in either order); bf16 rounds the sum once.
    double tol = dt == F32 ? POOL_FP32_TOL : BF16_OUT_TOL;
    check(tag + ": backward dx (" + pc.overlap() + " windows per pixel at most)", host(cpu, cdx), host(gpu, gdx),
        tol, 0);
  }

  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("avgPoolCasesByDtype")
  void avgPoolMatchesTheCpu(PoolCase pc, DType dt) {
    long seed = pc.name().hashCode();
    // Positive inputs: no cancellation, so the summation bound n u holds relative to each output.
    float[] x = as(dt, uniform(numel(pc.xShape()), seed, 1, 3));
    float[] dy = as(dt, uniform(numel(pc.yShape()), seed + 1, 1, 3));
    String tag = "avgPool2d " + pc + ", " + dt;
    Tensor cx = cpuT(x, pc.xShape());
    Tensor cy = cpu.allocate(F32, pc.yShape());
    Tensor cdy = cpuT(dy, pc.yShape());
    Tensor cdx = cpu.allocate(F32, pc.xShape());
    cpu.avgPool2dForward(cx, cy, pc.d());
    cpu.avgPool2dBackward(cdy, cdx, pc.d());
    Tensor gx = gpuT(dt, x, pc.xShape());
    Tensor gy = gpuDirty(dt, pc.yShape());
    Tensor gdy = gpuT(dt, dy, pc.yShape());
    Tensor gdx = gpuDirty(dt, pc.xShape());
    gpu.avgPool2dForward(gx, gy, pc.d());
    gpu.avgPool2dBackward(gdy, gdx, pc.d());
    assertArrayEquals(pc.yShape(), gy.shape());
    int area = pc.d().kernelH() * pc.d().kernelW();
    double fwdTol = dt == F32 ? Math.max(POOL_FP32_TOL, 2.0 * area * U) : BF16_OUT_TOL;
    double bwdTol = dt == F32 ? Math.max(POOL_FP32_TOL, 2.0 * pc.overlap() * U) : BF16_OUT_TOL;
    check(tag + ": forward y (" + area + " terms)", host(cpu, cy), host(gpu, gy), fwdTol, 0);
    check(tag + ": backward dx", host(cpu, cdx), host(gpu, gdx), bwdTol, 0);
  }

  /** Global average pooling keeps (N, C) and makes the spatial size 1x1, as the ResNet head needs. */
  @Test
  void globalAveragePoolShapeAndValues() {
    int n = 3;
    int c = 2048;
    Pool2dDesc global = new Pool2dDesc(7, 7, 1, 1, 0, 0);
    assertEquals(1, global.outH(7));
    assertEquals(1, global.outW(7));
    float[] x = new float[n * c * 49];
    for (int i = 0; i < x.length; i++) {
      x[i] = (i / 49) % 7 + (i % 49) / 49f; // plane p: (p % 7) + mean of 0/49 .. 48/49
    }
    for (DType dt : new DType[] {F32, BF16}) {
      Tensor gx = gpuT(dt, x, n, c, 7, 7);
      Tensor gy = gpuDirty(dt, n, c, 1, 1);
      gpu.avgPool2dForward(gx, gy, global);
      float[] y = host(gpu, gy);
      float[] want = new float[n * c];
      float[] xr = as(dt, x);
      for (int p = 0; p < n * c; p++) {
        double s = 0;
        for (int j = 0; j < 49; j++) {
          s += xr[p * 49 + j];
        }
        want[p] = (float) (s / 49);
      }
      check("global avg pool (" + n + ", " + c + ", 7, 7) -> (" + n + ", " + c + ", 1, 1), " + dt, want, y,
          dt == F32 ? POOL_FP32_TOL : BF16_OUT_TOL, 0);
    }
  }

  /**
   * Geometries of the bit-exact pooling test (Note [pooling kernels]): the ResNet stem at a small size with a batch,
   * 2x2/2, channel counts with and without the 8-channel vector path, windows that leave inputs uncovered, an
   * even kernel with padding (one more output than inputs), an asymmetric window and a global pool.
   */
  static List<PoolCase> exactPoolCases() {
    return List.of(
        new PoolCase("ResNet stem 3x3 s2 p1, batch 4, 64 channels, 20x18", 4, 64, 20, 18, Pool2dDesc.of(3, 2, 1)),
        new PoolCase("2x2 s2, batch 3, 16 channels, 28x28", 3, 16, 28, 28, Pool2dDesc.of(2, 2, 0)),
        new PoolCase("3x3 s1 p1, batch 2, 5 channels, 7x9", 2, 5, 7, 9, Pool2dDesc.of(3, 1, 1)),
        new PoolCase("2x2 s3 (uncovered inputs), batch 2, 8 channels, 11x10", 2, 8, 11, 10,
            new Pool2dDesc(2, 2, 3, 3, 0, 0)),
        new PoolCase("2x2 s1 p1 (7x6 out of 6x5), batch 2, 8 channels", 2, 8, 6, 5, new Pool2dDesc(2, 2, 1, 1, 1, 1)),
        new PoolCase("5x3 kernel, stride 2x3, pad 2x1, batch 1, 24 channels, 12x12", 1, 24, 12, 12,
            new Pool2dDesc(5, 3, 2, 3, 2, 1)),
        new PoolCase("global 7x7, batch 2, 32 channels", 2, 32, 7, 7, new Pool2dDesc(7, 7, 1, 1, 0, 0)));
  }

  static Stream<Arguments> exactPoolCasesByDtype() {
    return byDtype(exactPoolCases());
  }

  /** Max-pool inputs full of ties: few distinct values, +0 and -0, infinities and a NaN now and then. */
  private static float drawTied(SplittableRandom r) {
    int k = r.nextInt(64);
    return switch (k) {
      case 0 -> Float.NaN;
      case 1, 2 -> Float.NEGATIVE_INFINITY;
      case 3 -> Float.POSITIVE_INFINITY;
      default -> k % 6 == 0 ? -0f : k % 6 == 1 ? 0f : (k % 6 - 3.5f) / 2; // -0, 0, -0.75, -0.25, 0.25, 0.75
    };
  }

  /** The logical (N, C, H, W) values of a GPU tensor in either layout. */
  static float[] logical(Tensor t) {
    if (!t.channelsLast()) {
      return host(gpu, t);
    }
    Tensor f = gpu.allocate(F32, t.shape());
    gpu.convertLayout(t, f, false, false);
    return host(gpu, f);
  }

  /** act equals want bit for bit (NaN matching NaN), want rounded to bf16 first for a bf16 result. */
  static void assertSameBits(String what, float[] want, float[] act, DType dt) {
    assertEquals(want.length, act.length, what + ": lengths differ");
    for (int i = 0; i < want.length; i++) {
      float w = dt == BF16 ? CpuDevice.roundBf16(want[i]) : want[i];
      if (Float.floatToIntBits(w) != Float.floatToIntBits(act[i])) {
        throw new AssertionError(what + ": element " + i + " is " + act[i] + " (0x"
            + Integer.toHexString(Float.floatToRawIntBits(act[i])) + "), the CPU's " + w + " (0x"
            + Integer.toHexString(Float.floatToRawIntBits(w)) + ")");
      }
    }
    CudaTestLog.record(what, 0, 0);
  }

  /**
   * The pooling kernels (Note [pooling kernels]) give the CPU engine's results bit for bit, in both layouts: fp32
   * exactly, bf16 as the CPU's fp32 result on the bf16 inputs rounded once. Max pooling is fed ties (which go to
   * the first maximum in row-major window order on both engines), +0/-0, infinities and NaNs (the first NaN of a
   * window wins); every sum adds the same terms in the CPU's order.
   */
  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("exactPoolCasesByDtype")
  void poolingMatchesTheCpuBitForBitInBothLayouts(PoolCase pc, DType dt) {
    long seed = pc.name().hashCode() + 7;
    SplittableRandom r = new SplittableRandom(seed);
    float[] xm = new float[numel(pc.xShape())];
    for (int i = 0; i < xm.length; i++) {
      xm[i] = drawTied(r);
    }
    float[] xa = as(dt, uniform(xm.length, seed + 1, -1, 1));
    float[] dy = as(dt, uniform(numel(pc.yShape()), seed + 2, -1, 1));
    Pool2dDesc d = pc.d();
    Tensor cdy = cpuT(dy, pc.yShape());
    Tensor cxm = cpuT(xm, pc.xShape());
    Tensor cym = cpu.allocate(F32, pc.yShape());
    Tensor cdxm = cpu.allocate(F32, pc.xShape());
    cpu.maxPool2dForward(cxm, cym, d);
    cpu.maxPool2dBackward(cxm, cym, cdy, cdxm, d);
    Tensor cxa = cpuT(xa, pc.xShape());
    Tensor cya = cpu.allocate(F32, pc.yShape());
    Tensor cdxa = cpu.allocate(F32, pc.xShape());
    cpu.avgPool2dForward(cxa, cya, d);
    cpu.avgPool2dBackward(cdy, cdxa, d);
    for (boolean cl : new boolean[] {false, true}) {
      String tag = pc + ", " + dt + (cl ? ", NHWC" : ", NCHW");
      Tensor gxm = gpuT(dt, xm, pc.xShape());
      Tensor gxa = gpuT(dt, xa, pc.xShape());
      Tensor gdy = gpuT(dt, dy, pc.yShape());
      if (cl) {
        gxm = toChannelsLast(gxm);
        gxa = toChannelsLast(gxa);
        gdy = toChannelsLast(gdy);
      }
      Tensor gy = gpuDirty(dt, pc.yShape());
      Tensor gdx = gpuDirty(dt, pc.xShape());
      gpu.maxPool2dForward(gxm, gy, d);
      gpu.maxPool2dBackward(gxm, gy, gdy, gdx, d);
      assertEquals(cl, gy.channelsLast(), tag + ": y takes x's layout");
      assertEquals(cl, gdx.channelsLast(), tag + ": dx takes x's layout");
      assertSameBits("maxPool2d " + tag + ": forward", host(cpu, cym), logical(gy), dt);
      assertSameBits("maxPool2d " + tag + ": backward", host(cpu, cdxm), logical(gdx), dt);
      gy = gpuDirty(dt, pc.yShape());
      gdx = gpuDirty(dt, pc.xShape());
      gpu.avgPool2dForward(gxa, gy, d);
      gpu.markChannelsLast(gdx, cl);
      gpu.avgPool2dBackward(gdy, gdx, d);
      assertSameBits("avgPool2d " + tag + ": forward", host(cpu, cya), logical(gy), dt);
      assertSameBits("avgPool2d " + tag + ": backward", host(cpu, cdxa), logical(gdx), dt);
    }
  }

  static Tensor toChannelsLast(Tensor src) {
    Tensor t = gpu.allocate(src.dtype(), src.shape());
    gpu.convertLayout(src, t, true, false);
    return t;
  }

  // ---------------------------------------------------------------- batch normalisation

  record BnCase(String name, int[] shape) {
    int channels() {
      return shape[1];
    }

    /** Values per channel. */
    int m() {
      return numel(shape) / shape[1];
    }

    @Override
    public String toString() {
      return name;
    }
  }

  static List<BnCase> bnCases() {
    return List.of(
        new BnCase("(5, 8, 13, 13)", new int[] {5, 8, 13, 13}),
        new BnCase("ResNet stage 1 (2, 64, 56, 56), M = 6272", new int[] {2, 64, 56, 56}),
        new BnCase("batch 1 (1, 3, 7, 9), M = 63", new int[] {1, 3, 7, 9}),
        new BnCase("M = 4 (2, 4, 1, 2): unbiased running variance x 4/3", new int[] {2, 4, 1, 2}),
        new BnCase("1x1 spatial (16, 32, 1, 1)", new int[] {16, 32, 1, 1}),
        new BnCase("2-D (N, C) = (32, 16)", new int[] {32, 16}),
        new BnCase("many chunks, small planes (40, 8, 7, 7)", new int[] {40, 8, 7, 7}),
        new BnCase("planes of 300 values (3, 5, 15, 20)", new int[] {3, 5, 15, 20}));
  }

  static Stream<Arguments> bnCasesByDtype() {
    return byDtype(bnCases());
  }

  /** x with channel c ~ mean_c + std_c U(-sqrt 3, sqrt 3): means in [-0.5, 0.5], stds in [0.75, 2]. */
  static float[] bnInput(BnCase bc, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    int c = bc.channels();
    double[] mean = new double[c];
    double[] std = new double[c];
    for (int k = 0; k < c; k++) {
      mean[k] = r.nextDouble() - 0.5;
      std[k] = 0.75 + 1.25 * r.nextDouble();
    }
    int n = bc.shape()[0];
    int s = bc.m() / n;
    float[] x = new float[numel(bc.shape())];
    for (int b = 0; b < n; b++) {
      for (int k = 0; k < c; k++) {
        for (int j = 0; j < s; j++) {
          x[(b * c + k) * s + j] = (float) (mean[k] + std[k] * Math.sqrt(3) * (2 * r.nextDouble() - 1));
        }
      }
    }
    return x;
  }

  /**
   * Training-mode forward (y, saved mean and inverse std, running statistics with momentum 0.1 and the
   * unbiased variance), then backward (dx overwritten, dgamma and dbeta accumulated onto nonzero values).
   */
  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("bnCasesByDtype")
  void batchNormTrainingForwardAndBackwardMatchTheCpu(BnCase bc, DType dt) {
    long seed = bc.name().hashCode();
    int c = bc.channels();
    int[] xs = bc.shape();
    float[] x = as(dt, bnInput(bc, seed));
    float[] gamma = uniform(c, seed + 1, 0.5, 1.5);
    float[] beta = uniform(c, seed + 2, -0.5, 0.5);
    float[] rm0 = uniform(c, seed + 3, -0.5, 0.5);
    float[] rv0 = uniform(c, seed + 4, 0.5, 1.5);
    float[] dy = as(dt, uniform(numel(xs), seed + 5, -1, 1));
    float[] dg0 = uniform(c, seed + 6, -0.1, 0.1);
    float[] db0 = uniform(c, seed + 7, -0.1, 0.1);
    double outTol = dt == F32 ? BN_FP32_TOL : BF16_OUT_TOL;
    double statTol = dt == F32 ? BN_FP32_TOL : BF16_STATS_TOL;
    String tag = "batchNorm training " + bc + ", " + dt;

    Tensor cx = cpuT(x, xs);
    Tensor cg = cpuT(gamma, c);
    Tensor cb = cpuT(beta, c);
    Tensor cy = cpu.allocate(F32, xs);
    Tensor crm = cpuT(rm0, c);
    Tensor crv = cpuT(rv0, c);
    Tensor csm = cpu.allocate(F32, c);
    Tensor csi = cpu.allocate(F32, c);
    cpu.batchNormForwardTraining(cx, cg, cb, cy, crm, crv, BN_MOMENTUM, BN_EPS, csm, csi);
    Tensor gx = gpuT(dt, x, xs);
    Tensor gg = gpuT(F32, gamma, c);
    Tensor gb = gpuT(F32, beta, c);
    Tensor gy = gpuDirty(dt, xs);
    Tensor grm = gpuT(F32, rm0, c);
    Tensor grv = gpuT(F32, rv0, c);
    Tensor gsm = gpuDirty(F32, c);
    Tensor gsi = gpuDirty(F32, c);
    gpu.batchNormForwardTraining(gx, gg, gb, gy, grm, grv, BN_MOMENTUM, BN_EPS, gsm, gsi);
    check(tag + ": y", cy, gy, outTol);
    check(tag + ": saveMean", csm, gsm, statTol);
    check(tag + ": saveInvStd", csi, gsi, statTol);
    check(tag + ": runningMean (momentum 0.1)", crm, grm, statTol);
    check(tag + ": runningVar (momentum 0.1, unbiased)", crv, grv, statTol);

    Tensor cdy = cpuT(dy, xs);
    Tensor cdx = cpu.allocate(F32, xs);
    Tensor cdg = cpuT(dg0, c);
    Tensor cdb = cpuT(db0, c);
    cpu.batchNormBackward(cx, cdy, cg, csm, csi, cdx, cdg, cdb);
    Tensor gdy = gpuT(dt, dy, xs);
    Tensor gdx = gpuDirty(dt, xs);
    Tensor gdg = gpuT(F32, dg0, c);
    Tensor gdb = gpuT(F32, db0, c);
    gpu.batchNormBackward(gx, gdy, gg, gsm, gsi, gdx, gdg, gdb);
    check(tag + ": backward dx", cdx, gdx, outTol);
    check(tag + ": backward dgamma (+= onto nonzero)", cdg, gdg, statTol);
    check(tag + ": backward dbeta (+= onto nonzero)", cdb, gdb, statTol);
  }

  /**
   * The fused batch norm + ReLU (Note [fused batch norm + ReLU] in CudaDevice) against the CPU engine's two ops
   * (Device's defaults): forward y = relu(bn(x)) and the statistics, backward through the ReLU (dgamma, dbeta
   * accumulated), and dx written over dy itself (the default's aliasing).
   */
  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("bnCasesByDtype")
  void batchNormWithFusedReluMatchesTheCpu(BnCase bc, DType dt) {
    long seed = bc.name().hashCode() + 17;
    int c = bc.channels();
    int[] xs = bc.shape();
    float[] x = as(dt, bnInput(bc, seed));
    float[] gamma = uniform(c, seed + 1, 0.5, 1.5);
    float[] beta = uniform(c, seed + 2, -0.5, 0.5);
    float[] dy = as(dt, uniform(numel(xs), seed + 5, -1, 1));
    float[] dg0 = uniform(c, seed + 6, -0.1, 0.1);
    float[] db0 = uniform(c, seed + 7, -0.1, 0.1);
    double outTol = dt == F32 ? BN_FP32_TOL : BF16_OUT_TOL;
    double statTol = dt == F32 ? BN_FP32_TOL : BF16_STATS_TOL;
    String tag = "batchNorm + ReLU " + bc + ", " + dt;

    Tensor cx = cpuT(x, xs);
    Tensor cg = cpuT(gamma, c);
    Tensor cb = cpuT(beta, c);
    Tensor cy = cpu.allocate(F32, xs);
    Tensor csm = cpu.allocate(F32, c);
    Tensor csi = cpu.allocate(F32, c);
    cpu.batchNormForwardTraining(cx, cg, cb, cy, cpuT(new float[c], c), cpuT(new float[c], c), BN_MOMENTUM, BN_EPS,
        csm, csi, true);
    Tensor gx = gpuT(dt, x, xs);
    Tensor gg = gpuT(F32, gamma, c);
    Tensor gb = gpuT(F32, beta, c);
    Tensor gy = gpuDirty(dt, xs);
    Tensor gsm = gpuDirty(F32, c);
    Tensor gsi = gpuDirty(F32, c);
    gpu.batchNormForwardTraining(gx, gg, gb, gy, gpuT(F32, new float[c], c), gpuT(F32, new float[c], c),
        BN_MOMENTUM, BN_EPS, gsm, gsi, true);
    float[] hy = host(gpu, gy);
    int zeros = 0;
    for (float v : hy) {
      assertTrue(v >= 0f, tag + ": a fused ReLU output is negative: " + v);
      zeros += v == 0f ? 1 : 0;
    }
    assertTrue(zeros > 0 && zeros < hy.length, tag + ": the ReLU should zero some values but not all: " + zeros);
    check(tag + ": y", cy, gy, outTol);
    check(tag + ": saveMean", csm, gsm, statTol);

    Tensor cdx = cpuT(dy, xs); // the default writes dx over dy: start from dy, as the GPU call below does
    Tensor cdg = cpuT(dg0, c);
    Tensor cdb = cpuT(db0, c);
    cpu.batchNormBackwardRelu(cx, cy, cdx, cg, cb, csm, csi, cdx, cdg, cdb);
    Tensor gdx = gpuT(dt, dy, xs);
    Tensor gdg = gpuT(F32, dg0, c);
    Tensor gdb = gpuT(F32, db0, c);
    gpu.batchNormBackwardRelu(gx, gy, gdx, gg, gb, gsm, gsi, gdx, gdg, gdb);
    check(tag + ": backward dx (written over dy)", cdx, gdx, outTol);
    check(tag + ": backward dgamma (+= onto nonzero)", cdg, gdg, statTol);
    check(tag + ": backward dbeta (+= onto nonzero)", cdb, gdb, statTol);
  }

  /** The residual add with its ReLU fused, and the convolution's bias pass with its ReLU, against the CPU. */
  @ParameterizedTest(name = "{0}")
  @MethodSource("dtypes")
  void addAndConvolutionWithFusedReluMatchTheCpu(DType dt) {
    int[] xs = {3, 8, 9, 11};
    float[] a = as(dt, uniform(numel(xs), 41, -1, 1));
    float[] b = as(dt, uniform(numel(xs), 42, -1, 1));
    Tensor cy = cpu.allocate(F32, xs);
    cpu.add(cpuT(a, xs), cpuT(b, xs), cy, true);
    Tensor gy = gpuDirty(dt, xs);
    gpu.add(gpuT(dt, a, xs), gpuT(dt, b, xs), gy, true);
    check("add + ReLU " + dt, cy, gy, dt == F32 ? 0 : BF16_OUT_TOL);

    Conv2dDesc desc = new Conv2dDesc(1, 1, 1, 1, 1, 1, 1);
    int[] ws = {6, 8, 3, 3};
    int[] ys = {3, 6, 9, 11};
    float[] w = as(dt, uniform(numel(ws), 43, -0.3, 0.3));
    float[] bias = uniform(6, 44, -0.5, 0.5);
    Tensor ccy = cpu.allocate(F32, ys);
    cpu.conv2dForward(cpuT(a, xs), cpuT(w, ws), cpuT(bias, 6), ccy, desc, true);
    Tensor gcy = gpuDirty(dt, ys);
    gpu.conv2dForward(gpuT(dt, a, xs), gpuT(dt, w, ws), gpuT(F32, bias, 6), gcy, desc, true);
    for (float v : host(gpu, gcy)) {
      assertTrue(v >= 0f, "conv + bias + ReLU " + dt + ": negative output " + v);
    }
    check("conv + bias + ReLU " + dt, ccy, gcy, dt == F32 ? CONV_FP32_TOL : CONV_BF16_TOL);
  }

  /** The running statistics follow the contract's formula (checked here directly, not only against the CPU). */
  @Test
  void batchNormRunningStatisticsUseMomentumAndTheUnbiasedVariance() {
    float[] x = {1, 2, 3, 6, -1, 0, 4, 4}; // (2, 2, 1, 2): channel 0 = {1, 2, -1, 0}, channel 1 = {3, 6, 4, 4}
    Tensor gx = gpuT(F32, x, 2, 2, 1, 2);
    Tensor gg = gpuT(F32, new float[] {1, 1}, 2);
    Tensor gb = gpuT(F32, new float[] {0, 0}, 2);
    Tensor gy = gpu.allocate(F32, 2, 2, 1, 2);
    Tensor grm = gpuT(F32, new float[] {0.5f, -1f}, 2);
    Tensor grv = gpuT(F32, new float[] {1f, 2f}, 2);
    Tensor gsm = gpu.allocate(F32, 2);
    Tensor gsi = gpu.allocate(F32, 2);
    gpu.batchNormForwardTraining(gx, gg, gb, gy, grm, grv, 0.1f, 1e-5f, gsm, gsi);
    // channel 0: mean 0.5, biased var 1.25, unbiased 5/3; channel 1: mean 4.25, biased var 1.1875, unbiased 19/12
    float[] rm = host(gpu, grm);
    float[] rv = host(gpu, grv);
    float[] sm = host(gpu, gsm);
    float[] si = host(gpu, gsi);
    assertEquals(0.9 * 0.5 + 0.1 * 0.5, rm[0], 1e-6);
    assertEquals(0.9 * -1 + 0.1 * 4.25, rm[1], 1e-6);
    assertEquals(0.9 * 1 + 0.1 * 5.0 / 3, rv[0], 1e-6, "running variance must use the unbiased variance");
    assertEquals(0.9 * 2 + 0.1 * 19.0 / 12, rv[1], 1e-6, "running variance must use the unbiased variance");
    assertEquals(0.5, sm[0], 1e-6);
    assertEquals(4.25, sm[1], 1e-6);
    assertEquals(1 / Math.sqrt(1.25 + 1e-5), si[0], 1e-6, "saveInvStd uses the biased variance");
    assertEquals(1 / Math.sqrt(1.1875 + 1e-5), si[1], 1e-6, "saveInvStd uses the biased variance");
    CudaTestLog.record("batchNorm running statistics on a hand-computed (2, 2, 1, 2) example (abs err <= 1e-6)",
        0, 1e-6);
  }

  @ParameterizedTest(name = "{0}, {1}")
  @MethodSource("bnCasesByDtype")
  void batchNormInferenceMatchesTheCpu(BnCase bc, DType dt) {
    long seed = 17 + bc.name().hashCode();
    int c = bc.channels();
    float[] x = as(dt, bnInput(bc, seed));
    float[] gamma = uniform(c, seed + 1, 0.5, 1.5);
    float[] beta = uniform(c, seed + 2, -0.5, 0.5);
    float[] rm = uniform(c, seed + 3, -0.5, 0.5);
    float[] rv = uniform(c, seed + 4, 0.5, 2);
    Tensor cy = cpu.allocate(F32, bc.shape());
    cpu.batchNormForwardInference(cpuT(x, bc.shape()), cpuT(gamma, c), cpuT(beta, c), cpuT(rm, c), cpuT(rv, c),
        BN_EPS, cy);
    Tensor grm = gpuT(F32, rm, c);
    Tensor grv = gpuT(F32, rv, c);
    Tensor gy = gpuDirty(dt, bc.shape());
    gpu.batchNormForwardInference(gpuT(dt, x, bc.shape()), gpuT(F32, gamma, c), gpuT(F32, beta, c), grm, grv,
        BN_EPS, gy);
    check("batchNorm inference " + bc + ", " + dt + ": y", cy, gy, dt == F32 ? BN_FP32_TOL : BF16_OUT_TOL);
    assertArrayEquals(rm, host(gpu, grm), "inference must not change the running mean");
    assertArrayEquals(rv, host(gpu, grv), "inference must not change the running variance");
  }

  // ---------------------------------------------------------------- contract violations

  @Test
  void shapesThatDoNotAgreeThrowIllegalArgument() {
    Conv2dDesc d = Conv2dDesc.of(1, 1);
    Tensor x = gpu.allocate(F32, 2, 4, 8, 8);
    Tensor w = gpu.allocate(F32, 6, 4, 3, 3);
    Tensor y = gpu.allocate(F32, 2, 6, 8, 8);
    Tensor bias = gpu.allocate(F32, 6);
    assertIae("conv2dForward, y 7x8 for a 8x8 output",
        () -> gpu.conv2dForward(x, w, null, gpu.allocate(F32, 2, 6, 7, 8), d));
    assertIae("conv2dForward, y with 5 channels for 6 filters",
        () -> gpu.conv2dForward(x, w, null, gpu.allocate(F32, 2, 5, 8, 8), d));
    assertIae("conv2dForward, y batch 3 for x batch 2",
        () -> gpu.conv2dForward(x, w, null, gpu.allocate(F32, 3, 6, 8, 8), d));
    assertIae("conv2dForward, w with 3 input channels for x with 4",
        () -> gpu.conv2dForward(x, gpu.allocate(F32, 6, 3, 3, 3), null, y, d));
    assertIae("conv2dForward, groups 2 with w (6, 4, 3, 3) and C = 4",
        () -> gpu.conv2dForward(x, w, null, y, new Conv2dDesc(1, 1, 1, 1, 1, 1, 2)));
    assertIae("conv2dForward, bias of 5 for 6 filters", () -> gpu.conv2dForward(x, w, gpu.allocate(F32, 5), y, d));
    assertIae("conv2dForward, 3-D x", () -> gpu.conv2dForward(gpu.allocate(F32, 4, 8, 8), w, bias, y, d));
    assertIae("conv2dBackwardData, dx 8x9", () -> gpu.conv2dBackwardData(y, w, gpu.allocate(F32, 2, 4, 8, 9), d));
    assertIae("conv2dBackwardData, dy 7x8", () -> gpu.conv2dBackwardData(gpu.allocate(F32, 2, 6, 7, 8), w, x, d));
    assertIae("conv2dBackwardFilter, dw (6, 4, 3, 2)",
        () -> gpu.conv2dBackwardFilter(x, y, gpu.allocate(F32, 6, 4, 3, 2), null, d));
    assertIae("conv2dBackwardFilter, dbias of 7", () -> gpu.conv2dBackwardFilter(x, y, w, gpu.allocate(F32, 7), d));
    Pool2dDesc p = Pool2dDesc.of(2, 2, 0);
    Tensor px = gpu.allocate(F32, 2, 3, 8, 8);
    Tensor py = gpu.allocate(F32, 2, 3, 4, 4);
    assertIae("maxPool2dForward, y 3x4", () -> gpu.maxPool2dForward(px, gpu.allocate(F32, 2, 3, 3, 4), p));
    assertIae("maxPool2dForward, y with 4 channels", () -> gpu.maxPool2dForward(px, gpu.allocate(F32, 2, 4, 4, 4), p));
    assertIae("maxPool2dBackward, dx 8x9", () -> gpu.maxPool2dBackward(px, py, py, gpu.allocate(F32, 2, 3, 8, 9), p));
    assertIae("maxPool2dBackward, dy 4x3", () -> gpu.maxPool2dBackward(px, py, gpu.allocate(F32, 2, 3, 4, 3), px, p));
    assertIae("avgPool2dForward, y 5x4", () -> gpu.avgPool2dForward(px, gpu.allocate(F32, 2, 3, 5, 4), p));
    assertIae("avgPool2dBackward, dx batch 1", () -> gpu.avgPool2dBackward(py, gpu.allocate(F32, 1, 3, 8, 8), p));
    Tensor bx = gpu.allocate(F32, 4, 3, 5, 5);
    Tensor c3 = gpu.allocate(F32, 3);
    Tensor c4 = gpu.allocate(F32, 4);
    assertIae("batchNormForwardTraining, gamma of 4 for 3 channels",
        () -> gpu.batchNormForwardTraining(bx, c4, c3, gpu.allocate(F32, 4, 3, 5, 5), c3, c3, 0.1f, 1e-5f, c3, c3));
    assertIae("batchNormForwardTraining, y of another shape",
        () -> gpu.batchNormForwardTraining(bx, c3, c3, gpu.allocate(F32, 4, 3, 5, 4), c3, c3, 0.1f, 1e-5f, c3, c3));
    assertIae("batchNormForwardTraining, one value per channel (N = 1, 1x1)", () -> gpu.batchNormForwardTraining(
        gpu.allocate(F32, 1, 3, 1, 1), c3, c3, gpu.allocate(F32, 1, 3, 1, 1), c3, c3, 0.1f, 1e-5f, c3, c3));
    assertIae("batchNormForwardInference, runningVar of 4",
        () -> gpu.batchNormForwardInference(bx, c3, c3, c3, c4, 1e-5f, gpu.allocate(F32, 4, 3, 5, 5)));
    assertIae("batchNormBackward, dx of another shape",
        () -> gpu.batchNormBackward(bx, bx, c3, c3, c3, gpu.allocate(F32, 4, 3, 5, 4), c3, c3));
    assertIae("batchNormBackward, dbeta of 4", () -> gpu.batchNormBackward(bx, bx, c3, c3, c3, bx, c3, c4));
    // a CPU tensor handed to the GPU
    assertIae("conv2dForward with a CPU tensor", () -> gpu.conv2dForward(cpu.allocate(F32, 2, 4, 8, 8), w, null, y, d));
    CudaTestLog.record("conv/pool/batch-norm shape mismatches throw IllegalArgumentException (24 cases)", 0, 0);
  }

  @Test
  void dtypesOutsideTheContractThrowIllegalArgument() {
    Conv2dDesc d = Conv2dDesc.of(1, 1);
    int[] xs = {2, 4, 8, 8};
    int[] ws = {6, 4, 3, 3};
    int[] ys = {2, 6, 8, 8};
    Tensor x32 = gpu.allocate(F32, xs);
    Tensor w32 = gpu.allocate(F32, ws);
    Tensor y32 = gpu.allocate(F32, ys);
    Tensor x16 = gpu.allocate(BF16, xs);
    Tensor w16 = gpu.allocate(BF16, ws);
    Tensor y16 = gpu.allocate(BF16, ys);
    Tensor b32 = gpu.allocate(F32, 6);
    Tensor b16 = gpu.allocate(BF16, 6);
    assertIae("conv2dForward x bf16, w fp32, y bf16", () -> gpu.conv2dForward(x16, w32, null, y16, d));
    assertIae("conv2dForward x fp32, w fp32, y bf16", () -> gpu.conv2dForward(x32, w32, null, y16, d));
    assertIae("conv2dForward x bf16, w bf16, y fp32", () -> gpu.conv2dForward(x16, w16, null, y32, d));
    assertIae("conv2dForward bf16 with a bf16 bias", () -> gpu.conv2dForward(x16, w16, b16, y16, d));
    assertIae("conv2dForward fp32 with a bf16 bias", () -> gpu.conv2dForward(x32, w32, b16, y32, d));
    assertIae("conv2dForward int32 x", () -> gpu.conv2dForward(gpu.allocate(DType.INT32, xs), w32, null, y32, d));
    assertIae("conv2dBackwardData dy bf16, w fp32, dx bf16", () -> gpu.conv2dBackwardData(y16, w32, x16, d));
    assertIae("conv2dBackwardData dy fp32, w fp32, dx bf16", () -> gpu.conv2dBackwardData(y32, w32, x16, d));
    assertIae("conv2dBackwardFilter x bf16, dy fp32", () -> gpu.conv2dBackwardFilter(x16, y32, w32, b32, d));
    assertIae("conv2dBackwardFilter dw bf16", () -> gpu.conv2dBackwardFilter(x16, y16, w16, b32, d));
    assertIae("conv2dBackwardFilter dbias bf16", () -> gpu.conv2dBackwardFilter(x16, y16, w32, b16, d));
    Pool2dDesc p = Pool2dDesc.of(2, 2, 0);
    Tensor py32 = gpu.allocate(F32, 2, 4, 4, 4);
    Tensor py16 = gpu.allocate(BF16, 2, 4, 4, 4);
    assertIae("maxPool2dForward x fp32, y bf16", () -> gpu.maxPool2dForward(x32, py16, p));
    assertIae("maxPool2dBackward dy bf16, others fp32", () -> gpu.maxPool2dBackward(x32, py32, py16, x32, p));
    assertIae("avgPool2dForward x bf16, y fp32", () -> gpu.avgPool2dForward(x16, py32, p));
    assertIae("avgPool2dBackward dy fp32, dx bf16", () -> gpu.avgPool2dBackward(py32, x16, p));
    Tensor c32 = gpu.allocate(F32, 4);
    Tensor c16 = gpu.allocate(BF16, 4);
    assertIae("batchNormForwardTraining x bf16, y fp32",
        () -> gpu.batchNormForwardTraining(x16, c32, c32, x32, c32, c32, 0.1f, 1e-5f, c32, c32));
    assertIae("batchNormForwardTraining bf16 gamma",
        () -> gpu.batchNormForwardTraining(x16, c16, c32, x16, c32, c32, 0.1f, 1e-5f, c32, c32));
    assertIae("batchNormForwardTraining bf16 runningVar",
        () -> gpu.batchNormForwardTraining(x16, c32, c32, x16, c32, c16, 0.1f, 1e-5f, c32, c32));
    assertIae("batchNormForwardTraining bf16 saveMean",
        () -> gpu.batchNormForwardTraining(x16, c32, c32, x16, c32, c32, 0.1f, 1e-5f, c16, c32));
    assertIae("batchNormForwardInference x fp32, y bf16",
        () -> gpu.batchNormForwardInference(x32, c32, c32, c32, c32, 1e-5f, x16));
    assertIae("batchNormBackward dy fp32 for x bf16",
        () -> gpu.batchNormBackward(x16, x32, c32, c32, c32, x16, c32, c32));
    assertIae("batchNormBackward dx fp32 for x bf16",
        () -> gpu.batchNormBackward(x16, x16, c32, c32, c32, x32, c32, c32));
    assertIae("batchNormBackward bf16 dgamma", () -> gpu.batchNormBackward(x16, x16, c32, c32, c32, x16, c16, c32));
    CudaTestLog.record("conv/pool/batch-norm dtype contract violations throw IllegalArgumentException (23 cases)",
        0, 0);
  }
}
