package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.SplittableRandom;

/**
 * 2-D convolution as torch.nn.Conv2d: x (N, C, H, W) -> y (N, K, OH, OW), weight (K, C / groups, kh, kw),
 * optional bias (K). Initialised like PyTorch's default (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and
 * bias, fan_in = C / groups * kh * kw), or with torchvision ResNet's kaiming_normal_(mode="fan_out",
 * nonlinearity="relu"): N(0, 2 / (K * kh * kw)) ({@link Init#KAIMING_NORMAL}; the bias, if any, stays zero).
 */
public final class Conv2d extends Layer {
  /** How the weights are drawn. */
  public enum Init {
    /** PyTorch's default for nn.Conv2d (kaiming_uniform with a = sqrt(5)). */
    UNIFORM,
    /** torchvision ResNet: kaiming_normal_, mode fan_out, ReLU gain; bias zero. */
    KAIMING_NORMAL;

    /** The JSON name: "uniform" or "kaiming_normal". */
    public String wireName() {
      return name().toLowerCase(java.util.Locale.ROOT);
    }
  }

  private final int filters;
  private final int kh;
  private final int kw;
  private final Conv2dDesc desc;
  private final boolean bias;
  private final Init init;
  private int channels;
  private int wIndex = -1;
  private int bIndex = -1;
  private Tensor w; // (K, C/groups, kh, kw)
  private Tensor b; // (K)
  private Tensor dw; // (K, C/groups, kh, kw)
  private Tensor db; // (K)
  private Tensor x; // (N, C, H, W), saved by forward (bf16 on the mixed-precision path)
  private Tensor wLow; // bf16 view of the model's parameter mirror, or null: fp32 compute
  private boolean channelsLast; // mixed path with NHWC activations (Note [channels-last tensors] in CudaDevice)
  private Tensor wUsed; // the filter the last forward used (wLow, or its NHWC copy)
  private Tensor y; // (N, K, OH, OW), the last forward's output (after the ReLU when it is fused)
  private boolean relu; // the ReLU after this layer runs in its bias pass (Note [fused ReLU] in Model)

  /**
   * @param filters output channels K
   * @param kernel {kh, kw}
   * @param desc stride, padding, dilation, groups
   */
  public Conv2d(int filters, int[] kernel, Conv2dDesc desc, boolean bias, Init init) {
    if (filters <= 0) {
      throw new IllegalArgumentException("conv2d: filters must be > 0, got " + filters);
    }
    if (kernel.length != 2 || kernel[0] <= 0 || kernel[1] <= 0) {
      throw new IllegalArgumentException("conv2d: kernel must be > 0, got " + (kernel.length == 2 ? kernel[0] + "x"
          + kernel[1] : java.util.Arrays.toString(kernel)));
    }
    if (filters % desc.groups() != 0) {
      throw new IllegalArgumentException("conv2d: filters (" + filters + ") must be divisible by groups ("
          + desc.groups() + ")");
    }
    this.filters = filters;
    this.kh = kernel[0];
    this.kw = kernel[1];
    this.desc = desc;
    this.bias = bias;
    this.init = init;
  }

  public int filters() {
    return filters;
  }

  public Conv2dDesc desc() {
    return desc;
  }

  public boolean hasBias() {
    return bias;
  }

  @Override
  public int[] outputShape(int[] in) {
    if (in.length != 3) {
      throw new IllegalArgumentException("conv2d expects (channels, height, width), got " + Shape.str(in)
          + "; give the model input as [C, H, W]");
    }
    if (in[0] % desc.groups() != 0) {
      throw new IllegalArgumentException("conv2d: input channels (" + in[0] + ") must be divisible by groups ("
          + desc.groups() + ")");
    }
    int oh = desc.outH(in[1], kh);
    int ow = desc.outW(in[2], kw);
    if (oh <= 0 || ow <= 0) {
      throw new IllegalArgumentException("conv2d: kernel " + kh + "x" + kw + " (dilation " + desc.dilationH() + "x"
          + desc.dilationW() + ") does not fit the input " + in[1] + "x" + in[2] + " with padding " + desc.padH()
          + "x" + desc.padW());
    }
    return new int[] {filters, oh, ow};
  }

  @Override
  public void declare(String name, int[] inputShape, ParameterSet.Builder builder) {
    super.declare(name, inputShape, builder);
    this.channels = inputShape[0];
    wIndex = builder.add(name + ".weight", filters, channels / desc.groups(), kh, kw);
    if (bias) {
      bIndex = builder.add(name + ".bias", filters);
    }
  }

  @Override
  public void bind(Device device, ParameterSet params) {
    super.bind(device, params);
    w = params.param(wIndex);
    dw = params.grad(wIndex);
    if (bias) {
      b = params.param(bIndex);
      db = params.grad(bIndex);
    }
  }

  @Override
  public void initialize(ParameterSet params, float[] host, SplittableRandom rng) {
    ParameterSet.Entry we = params.entries().get(wIndex);
    if (init == Init.KAIMING_NORMAL) {
      double std = Math.sqrt(2.0 / (filters * kh * kw));
      for (long k = 0; k < we.numel(); k++) {
        host[Math.toIntExact(we.offset() + k)] = (float) (Inits.gaussian(rng) * std);
      }
      return; // bias stays zero
    }
    double bound = 1.0 / Math.sqrt((double) channels / desc.groups() * kh * kw);
    Inits.uniform(host, we, bound, rng);
    if (bias) {
      Inits.uniform(host, params.entries().get(bIndex), bound, rng);
    }
  }

  /** Index of the weight in the model's parameter set. */
  int weightIndex() {
    return wIndex;
  }

  /**
   * Mixed precision (the model's bf16 path, Note [mixed-precision convolutions]): the convolutions read bf16
   * activations and {@code weightMirror} (the bf16 copy of this layer's weight), accumulate in fp32 and write
   * bf16 outputs; the weight gradient (and the bias and its gradient) stay fp32.
   */
  void enableMixed(Tensor weightMirror, boolean channelsLast) {
    this.channelsLast = channelsLast;
    if (weightMirror.dtype() != dev.sparktrainer.engine.DType.BFLOAT16 || weightMirror.numel() != w.numel()) {
      throw new IllegalArgumentException("conv2d " + name + ": the weight mirror must be BFLOAT16 of "
          + w.numel() + " elements, got " + weightMirror);
    }
    this.wLow = weightMirror.reshape(w.shape());
  }

  // Note [mixed-precision convolutions]: as PyTorch's autocast runs conv2d in bf16 (inputs and weights cast,
  // fp32 accumulation inside cuDNN), while the optimizer keeps fp32 master weights. An fp32 input (the images)
  // is cast once into a layer buffer; the output stays bf16 for the next layer (batch norm, ReLU, pooling
  // all take bf16 activations), and the incoming gradient is cast to bf16 when it arrives as fp32.
  @Override
  public Tensor forward(Tensor x, Context ctx) {
    int[] s = x.shape();
    int[] ys = {s[0], filters, desc.outH(s[2], kh), desc.outW(s[3], kw)};
    if (wLow != null) {
      dev.sparktrainer.engine.DType bf16 = dev.sparktrainer.engine.DType.BFLOAT16;
      wUsed = wLow;
      if (channelsLast && !x.channelsLast() && (long) s[2] * s[3] > 1) {
        Tensor xl = buffer("xLowNhwc", bf16, s); // the model's input (or a channels-first tensor): convert once
        device.convertLayout(x, xl, true, false);
        this.x = xl;
      } else {
        this.x = as("xLow", x, bf16);
      }
      if (this.x.channelsLast() && (long) kh * kw > 1) {
        wUsed = buffer("wNhwc", bf16, w.shape()); // (K, kh, kw, C/groups) in memory, refreshed every step
        device.convertLayout(wLow, wUsed, true, false);
      }
      y = buffer("y", bf16, ys);
      device.conv2dForward(this.x, wUsed, bias ? b : null, y, desc, relu);
      return y;
    }
    this.x = x;
    y = buffer("y", ys);
    device.conv2dForward(x, w, bias ? b : null, y, desc, relu);
    return y;
  }

  /** Whether forward reads its input as bf16 anyway (the mixed-precision path): an fp32 input is only rounded. */
  boolean roundsInputToBf16() {
    return wLow != null;
  }

  /** The output is read back only through a fused ReLU (its mask). */
  @Override
  boolean backwardReadsOutput() {
    return relu;
  }

  /** Computes the ReLU that follows in the bias pass (Note [fused ReLU] in Model). */
  void fuseRelu() {
    relu = true;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    Tensor cast = gradAs("dyCast", dy, x.dtype());
    Tensor g = cast;
    if (relu) {
      g = gradBuffer("dyRelu", cast.dtype(), cast.shape());
      device.reluBackward(y, cast, g);
      if (cast != dy) {
        releaseGrad(cast);
      }
    }
    device.conv2dBackwardFilter(x, g, dw, bias ? db : null, desc);
    Tensor dx = null;
    if (needInputGrad) {
      dx = gradBuffer("dx", x.dtype(), x.shape());
      device.conv2dBackwardData(g, wLow != null ? wUsed : w, dx, desc);
    }
    if (g != dy) {
      releaseGrad(g); // the cast or the masked dy (Note [transient gradient buffers])
    }
    return dx;
  }
}
