package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static dev.sparktrainer.cuda.CudaTestSupport.normwiseRelErr;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.nn.ModelZoo;
import java.util.SplittableRandom;
import java.util.function.Consumer;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Channels-last (NHWC) activations (Note [channels-last tensors] in CudaDevice) against the channels-first
 * path of the same GPU: every cuDNN op gives the same logical result from NHWC inputs (to the tolerance of
 * different cuDNN algorithms: fp32 1e-4, bf16 2e-2 of max |ref|, as CudaConvOpsTest allows against the CPU),
 * layout conversions are exact, mixing layouts throws, and the Fashion-MNIST CNN on the bf16 path
 * (-Dsparktrainer.cuda.channelsLast=true) matches the channels-first run of the same steps. ResNet-18 (bf16, 3x64x64,
 * batch 16) was compared too on 2026-11-26 and differed by 2.5e-2 in the step-1 logits and 0.21 in the
 * gradients (normwise), while every op agreed to <= 9e-4; batch norm over few values per channel makes that
 * setup amplify rounding differences (measured on the CPU alone: docs/gpu.md), so a model-level ResNet check
 * needs a better-conditioned setup before it can stand as a test.
 */
class CudaChannelsLastTest {
  static final DType F32 = DType.FLOAT32;
  static final DType BF16 = DType.BFLOAT16;
  static CudaDevice gpu;

  @BeforeEach
  void open() {
    CudaTestSupport.assumeGpu();
    CudaTestSupport.assumeJni();
    if (gpu == null) {
      gpu = new CudaDevice(0);
    }
    gpu.useCudnnGraph("graph".equals(CudaDevice.CUDNN_API)); // the process's API unless a test picks one
  }

  @AfterAll
  static void close() {
    if (gpu != null) {
      gpu.close();
      gpu = null;
    }
  }

  static float[] uniform(int n, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] a = new float[n];
    for (int i = 0; i < n; i++) {
      a[i] = (float) (r.nextDouble() * 2 - 1);
    }
    return a;
  }

  /** A channels-first GPU tensor of dt holding data. */
  static Tensor nchw(DType dt, float[] data, int... shape) {
    Tensor t = gpu.allocate(dt, shape);
    gpu.upload(data, 0, t);
    return t;
  }

  /** The same logical tensor converted to channels-last. */
  static Tensor nhwc(Tensor src) {
    Tensor t = gpu.allocate(src.dtype(), src.shape());
    gpu.convertLayout(src, t, true, false);
    assertTrue(t.channelsLast());
    return t;
  }

  /** Host values of a tensor in logical (N, C, H, W) order, whatever its layout. */
  static float[] logical(Tensor t) {
    if (!t.channelsLast()) {
      return host(gpu, t);
    }
    Tensor f = gpu.allocate(F32, t.shape());
    gpu.convertLayout(t, f, false, false);
    return host(gpu, f);
  }

  static void close(String what, float[] ref, float[] act, double tol) {
    double scale = Math.max(1e-30, CudaTestSupport.maxAbs(ref));
    double worst = 0;
    for (int i = 0; i < ref.length; i++) {
      worst = Math.max(worst, Math.abs((double) act[i] - ref[i]));
    }
    double e = worst / scale;
    CudaTestLog.record("channels-last vs channels-first: " + what, e, tol);
    assertTrue(e <= tol, what + ": error " + e + " > " + tol);
  }

  static double tol(DType dt) {
    return dt == BF16 ? 2e-2 : 1e-4;
  }

  @Test
  void conversionsAreExactAndInNhwcOrder() {
    int n = 2, c = 3, h = 4, w = 5;
    float[] a = uniform(n * c * h * w, 1);
    Tensor x = nchw(F32, a, n, c, h, w);
    Tensor cl = nhwc(x);
    float[] raw = host(gpu, cl.reshape(n * c * h * w)); // a reshape is a row-major view of the NHWC bytes
    for (int b = 0; b < n; b++) {
      for (int ch = 0; ch < c; ch++) {
        for (int p = 0; p < h * w; p++) {
          assertTrue(raw[(b * h * w + p) * c + ch] == a[(b * c + ch) * h * w + p], "NHWC order at " + b + "," + ch);
        }
      }
    }
    assertArrayEquals(a, logical(cl), 0f);
    Tensor acc = nchw(F32, a, n, c, h, w);
    gpu.convertLayout(cl, acc, false, true); // += : twice the values
    float[] twice = host(gpu, acc);
    for (int i = 0; i < a.length; i++) {
      assertTrue(twice[i] == 2 * a[i]);
    }
    assertFalse(acc.channelsLast());
  }

  record ConvCase(String name, int n, int c, int h, int w, int k, int kh, int kw, Conv2dDesc desc, boolean bias) {}

  static final ConvCase[] CONVS = {
      new ConvCase("3x3 p1 bias, 32->64, 14x14", 4, 32, 14, 14, 64, 3, 3, Conv2dDesc.of(1, 1), true),
      new ConvCase("ResNet stem 7x7 s2 p3, 3->64, 56x56", 2, 3, 56, 56, 64, 7, 7, Conv2dDesc.of(2, 3), false),
      new ConvCase("1x1 s2 downsample, 64->128, 13x13", 3, 64, 13, 13, 128, 1, 1, Conv2dDesc.of(2, 0), false),
      new ConvCase("3x3 groups 2 dilation 2, 16->32, 11x10", 2, 16, 11, 10, 32, 3, 3,
          new Conv2dDesc(1, 1, 2, 2, 2, 2, 2), true),
  };

  /** Both layouts through the same cuDNN API, for each API. */
  @ParameterizedTest(name = "{0}")
  @EnumSource(CudaConvOpsTest.CudnnApi.class)
  void convolutionsMatchChannelsFirst(CudaConvOpsTest.CudnnApi api) {
    api.use(gpu);
    for (DType dt : new DType[] {F32, BF16}) {
      for (ConvCase cc : CONVS) {
        String name = cc.name() + ", " + dt + ", " + api;
        int[] xs = {cc.n(), cc.c(), cc.h(), cc.w()};
        int[] ws = {cc.k(), cc.c() / cc.desc().groups(), cc.kh(), cc.kw()};
        int[] ys = {cc.n(), cc.k(), cc.desc().outH(cc.h(), cc.kh()), cc.desc().outW(cc.w(), cc.kw())};
        float[] xa = uniform(xs[0] * xs[1] * xs[2] * xs[3], 11);
        float[] wa = uniform(ws[0] * ws[1] * ws[2] * ws[3], 12);
        float[] dya = uniform(ys[0] * ys[1] * ys[2] * ys[3], 13);
        Tensor x = nchw(dt, xa, xs);
        Tensor w = nchw(dt, wa, ws);
        Tensor dy = nchw(dt, dya, ys);
        Tensor b = cc.bias() ? nchw(F32, uniform(cc.k(), 14), cc.k()) : null;
        Tensor xl = nhwc(x);
        Tensor wl = nhwc(w); // NHWC filter (K, kh, kw, C/groups)
        Tensor dyl = nhwc(dy);
        // forward
        Tensor y = gpu.allocate(dt, ys);
        Tensor yl = gpu.allocate(dt, ys);
        gpu.conv2dForward(x, w, b, y, cc.desc());
        gpu.conv2dForward(xl, wl, b, yl, cc.desc());
        assertTrue(yl.channelsLast(), name + ": the output takes the input's layout");
        close(name + ": forward y", host(gpu, y), logical(yl), tol(dt));
        // backward data
        Tensor dx = gpu.allocate(dt, xs);
        Tensor dxl = gpu.allocate(dt, xs);
        gpu.conv2dBackwardData(dy, w, dx, cc.desc());
        gpu.conv2dBackwardData(dyl, wl, dxl, cc.desc());
        close(name + ": backward data dx", host(gpu, dx), logical(dxl), tol(dt));
        // backward filter: fp32 (K, C/groups, kh, kw) gradients accumulated onto the same start
        float[] start = uniform(ws[0] * ws[1] * ws[2] * ws[3], 15);
        Tensor dw = nchw(F32, start, ws);
        Tensor dwl = nchw(F32, start, ws);
        Tensor db = cc.bias() ? nchw(F32, uniform(cc.k(), 16), cc.k()) : null;
        Tensor dbl = cc.bias() ? nchw(F32, host(gpu, db), cc.k()) : null;
        gpu.conv2dBackwardFilter(x, dy, dw, db, cc.desc());
        gpu.conv2dBackwardFilter(xl, dyl, dwl, dbl, cc.desc());
        assertFalse(dwl.channelsLast(), name + ": the fp32 filter gradient stays (K, C, kh, kw)");
        close(name + ": backward filter dw (+=)", host(gpu, dw), host(gpu, dwl), tol(dt));
        if (cc.bias()) {
          close(name + ": backward filter dbias (+=)", host(gpu, db), host(gpu, dbl), tol(dt));
        }
      }
    }
  }

  @Test
  void poolingAndBatchNormMatchChannelsFirst() {
    for (DType dt : new DType[] {F32, BF16}) {
      int[] xs = {3, 16, 13, 13};
      float[] xa = uniform(3 * 16 * 13 * 13, 21);
      Tensor x = nchw(dt, xa, xs);
      Tensor xl = nhwc(x);
      for (boolean avg : new boolean[] {false, true}) {
        Pool2dDesc pd = new Pool2dDesc(3, 3, 2, 2, 1, 1);
        String name = (avg ? "avgPool2d" : "maxPool2d") + " 3x3 s2 p1, " + dt;
        int[] ys = {3, 16, pd.outH(13), pd.outW(13)};
        Tensor y = gpu.allocate(dt, ys);
        Tensor yl = gpu.allocate(dt, ys);
        Tensor dy = nchw(dt, uniform(3 * 16 * ys[2] * ys[3], 22), ys);
        Tensor dyl = nhwc(dy);
        Tensor dx = gpu.allocate(dt, xs);
        Tensor dxl = gpu.allocate(dt, xs);
        if (avg) {
          gpu.avgPool2dForward(x, y, pd);
          gpu.avgPool2dForward(xl, yl, pd);
          gpu.avgPool2dBackward(dy, dx, pd);
          gpu.markChannelsLast(dxl, true);
          gpu.avgPool2dBackward(dyl, dxl, pd);
        } else {
          gpu.maxPool2dForward(x, y, pd);
          gpu.maxPool2dForward(xl, yl, pd);
          gpu.maxPool2dBackward(x, y, dy, dx, pd);
          gpu.maxPool2dBackward(xl, yl, dyl, dxl, pd);
        }
        close(name + ": forward", host(gpu, y), logical(yl), tol(dt));
        close(name + ": backward", host(gpu, dx), logical(dxl), tol(dt));
      }
      // batch norm, training forward and backward
      String name = "batchNorm (3, 16, 13, 13), " + dt;
      float[] ga = uniform(16, 23);
      float[] ba = uniform(16, 24);
      Tensor[] outs = new Tensor[2];
      float[][] stats = new float[2][];
      float[][] grads = new float[2][];
      for (int v = 0; v < 2; v++) {
        Tensor in = v == 0 ? x : xl;
        Tensor g = nchw(F32, ga, 16);
        Tensor be = nchw(F32, ba, 16);
        Tensor rm = nchw(F32, new float[16], 16);
        Tensor rv = nchw(F32, uniform(16, 25), 16);
        Tensor sm = gpu.allocate(F32, 16);
        Tensor si = gpu.allocate(F32, 16);
        Tensor y = gpu.allocate(dt, xs);
        gpu.batchNormForwardTraining(in, g, be, y, rm, rv, 0.1f, 1e-5f, sm, si);
        Tensor dy = nchw(dt, uniform(3 * 16 * 13 * 13, 26), xs);
        Tensor dyIn = v == 0 ? dy : nhwc(dy);
        Tensor dx = gpu.allocate(dt, xs);
        Tensor dg = gpu.allocate(F32, 16);
        Tensor db = gpu.allocate(F32, 16);
        gpu.batchNormBackward(in, dyIn, g, sm, si, dx, dg, db);
        outs[v] = y;
        stats[v] = concat(host(gpu, sm), host(gpu, si), host(gpu, rm), host(gpu, rv));
        grads[v] = concat(logical(dx), host(gpu, dg), host(gpu, db));
      }
      close(name + ": y", logical(outs[0]), logical(outs[1]), tol(dt));
      close(name + ": saved and running statistics", stats[0], stats[1], dt == BF16 ? 1e-3 : 1e-5);
      close(name + ": dx, dgamma, dbeta", grads[0], grads[1], tol(dt));
    }
  }

  static float[] concat(float[]... parts) {
    int n = 0;
    for (float[] p : parts) {
      n += p.length;
    }
    float[] r = new float[n];
    int o = 0;
    for (float[] p : parts) {
      System.arraycopy(p, 0, r, o, p.length);
      o += p.length;
    }
    return r;
  }

  @Test
  void addIsCopyPlusAxpyInOnePass() {
    for (DType dt : new DType[] {F32, BF16}) {
      Tensor a = nhwc(nchw(dt, uniform(2 * 8 * 7 * 7, 41), 2, 8, 7, 7));
      Tensor b = nhwc(nchw(dt, uniform(2 * 8 * 7 * 7, 42), 2, 8, 7, 7));
      Tensor y = gpu.allocate(dt, 2, 8, 7, 7);
      gpu.add(a, b, y);
      assertTrue(y.channelsLast(), "add keeps the layout");
      Tensor ref = gpu.allocate(dt, 2, 8, 7, 7);
      gpu.copy(a, ref);
      gpu.axpy(1f, b, ref);
      assertArrayEquals(host(gpu, ref), host(gpu, y), 0f, "add vs copy + axpy, " + dt);
    }
    CudaTestLog.record("add(a, b, y) equals copy + axpy bit for bit (fp32, bf16, channels-last)", 0, 0);
  }

  @Test
  void mixingLayoutsThrows() {
    Tensor x = nchw(F32, uniform(2 * 4 * 5 * 5, 31), 2, 4, 5, 5);
    Tensor xl = nhwc(x);
    Tensor w = nchw(F32, uniform(8 * 4 * 9, 32), 8, 4, 3, 3); // a channels-first 3x3 filter
    Tensor y = gpu.allocate(F32, 2, 8, 5, 5);
    assertThrows(IllegalArgumentException.class, () -> gpu.conv2dForward(xl, w, null, y, Conv2dDesc.of(1, 1)));
    assertThrows(IllegalArgumentException.class, () -> gpu.axpy(1f, xl, x));
    Tensor flat = gpu.allocate(F32, 2, 100);
    assertThrows(IllegalArgumentException.class, () -> gpu.copy(xl, flat)); // a reshape in disguise
    CudaTestLog.record("mixing channels-last and channels-first tensors throws IllegalArgumentException (3 cases)",
        0, 0);
  }

  /** The bf16 path with channels-last activations (the default) against the same steps channels-first. */
  static void compareModel(String name, ModelSpec spec, int batch, int steps) {
    int n = steps * batch;
    float[] xs = CudaCnnTrainingTest.gaussian(n * spec.inputSize(), 3);
    int[] ys = CudaCnnTrainingTest.labels(n, spec.outputSize(), 4);
    CudaCnnTrainingTest.Trace first = withChannelsLast(false,
        () -> CudaCnnTrainingTest.sgdSteps(gpu, spec, xs, ys, batch, steps, BF16));
    CudaCnnTrainingTest.Trace last = withChannelsLast(true,
        () -> CudaCnnTrainingTest.sgdSteps(gpu, spec, xs, ys, batch, steps, BF16));
    double tol = 5e-2; // two bf16 runs with different cuDNN algorithms (as the bf16-vs-fp32 tests allow)
    Consumer<String> none = s -> { };
    check(name + ": step 1 logits", first.logits(), last.logits(), tol);
    check(name + ": step 1 parameter gradients", first.grads(), last.grads(), tol);
    check(name + ": parameters after " + steps + " SGD-momentum steps", first.params().get(steps - 1),
        last.params().get(steps - 1), tol);
    none.accept(name);
  }

  static void check(String what, float[] a, float[] b, double tol) {
    double e = normwiseRelErr(a, b);
    CudaTestLog.record("bf16 channels-last vs channels-first, " + what + " (normwise)", e, tol);
    assertTrue(e <= tol, what + ": normwise error " + e + " > " + tol);
  }

  static <T> T withChannelsLast(boolean on, java.util.function.Supplier<T> run) {
    String old = System.getProperty("sparktrainer.cuda.channelsLast");
    System.setProperty("sparktrainer.cuda.channelsLast", String.valueOf(on));
    try {
      assertTrue(gpu.supportsChannelsLast() == on);
      return run.get();
    } finally {
      if (old == null) {
        System.clearProperty("sparktrainer.cuda.channelsLast");
      } else {
        System.setProperty("sparktrainer.cuda.channelsLast", old);
      }
    }
  }

  @Test
  void fashionMnistCnnMatchesChannelsFirst() {
    compareModel("Fashion-MNIST CNN bf16, batch 64", ModelZoo.fashionMnistCnn(), 64, 3);
  }
}
