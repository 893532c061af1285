package dev.sparktrainer.nn;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.SplittableRandom;

/** y = x W^T + b, W (out, in) as in torch.nn.Linear; initialised U(-1/sqrt(in), 1/sqrt(in)) like PyTorch. */
public final class Linear extends Layer {
  private final int units;
  private final boolean bias;
  private int in;
  private int wIndex = -1;
  private int bIndex = -1;
  private Tensor w; // (out, in)
  private Tensor b; // (out)
  private Tensor dw; // (out, in)
  private Tensor db; // (out)
  private Tensor x; // (N, in), saved by forward
  // Mixed precision (GPU engine, issue 4): with compute dtype BFLOAT16 the matmuls take bf16 copies of x, W
  // and dy with fp32 accumulation and fp32 outputs/gradients; W itself stays fp32 (the master copy).
  private DType compute = DType.FLOAT32;
  private Tensor xLow; // (N, in) bf16, saved by forward
  private Tensor wLow; // (out, in) bf16, refreshed by every forward
  // Fused path (Note [fused linear path]): set by Model when the device prefers it and compute is bf16.
  private boolean fused;
  private boolean fuseRelu; // this layer also applies the ReLU that follows it in the spec
  private boolean fuseGelu; // this layer also applies the GELU that follows it (Note [fused GELU])
  private Tensor preOut; // (N, out) bf16: GELU's input, saved by forward when fuseGelu
  private boolean overwriteGrads; // backward writes dW/db instead of adding (the model skipped zeroGrad)
  private Tensor wMirror; // (out, in) bf16 view of the model's parameter mirror
  private Tensor bMirror; // (out) bf16 view of the model's parameter mirror, or null
  private Tensor yOut; // (N, out) bf16, saved by forward (the ReLU mask)
  private ScratchSource scratch; // shared bf16 buffers for dx, handed out by the model
  private int ordinal; // position among the model's fused linear layers (picks the dx buffer)

  /** Where a fused layer gets its dx buffer: shared between layers by the model (ping-pong). */
  interface ScratchSource {
    Tensor get(int slot, int[] shape);
  }

  public Linear(int units, boolean bias) {
    if (units <= 0) {
      throw new IllegalArgumentException("linear: units must be > 0, got " + units);
    }
    this.units = units;
    this.bias = bias;
  }

  public int units() {
    return units;
  }

  /** Whether the layer has a bias (a second parameter entry after its weight). */
  public boolean hasBias() {
    return bias;
  }

  /**
   * The dtype the matmuls read: FLOAT32 (default) or BFLOAT16 (mixed precision: bf16 inputs, fp32
   * accumulation, fp32 master weights and gradients).
   */
  public void setComputeDType(DType dtype) {
    if (dtype != DType.FLOAT32 && dtype != DType.BFLOAT16) {
      throw new IllegalArgumentException("linear: compute dtype must be float32 or bfloat16, got " + dtype);
    }
    this.compute = dtype;
  }

  public DType computeDType() {
    return compute;
  }

  /** A bf16 copy of {@code src} in this layer's buffer {@code key} (a layer buffer: Note [step memory plan]). */
  private Tensor low(String key, Tensor src) {
    Tensor t = buffer(key, DType.BFLOAT16, src.shape());
    device.copy(src, t);
    return t;
  }

  // Note [fused GELU]: as a ReLU, a GELU right after a fused linear runs inside it: forward is one cuBLASLt call with
  // the GELU_AUX_BIAS epilogue (device.linearForwardGelu), which writes GELU's output and keeps its input, and
  // backward is one pass for GELU's derivative and the bias gradient (device.linearGeluBackward, the ReLU's pass with
  // GELU's derivative), where the Activation layer had a pass of its own each way. The numbers: GELU's tanh
  // approximation, as the layer's; cuBLASLt's epilogue computes it in its own way (in fp32, where the kernels take
  // tanh in double), so outputs may differ in the last bits of bf16. On by default (-Dsparktrainer.nn.fuseGelu=false
  // turns it off, read when a model is built): the MLP with GELU trained at 401k samples/s against 386k with
  // the Activation layer's passes (+3.9%, one H100, ours only, 2026-11-26; benchmarks/README.md).

  /**
   * Note [fused linear path]: with bf16 compute on a device that prefers it, forward is one cuBLASLt call
   * (bf16 x and W from the model's parameter mirror, bias + optional ReLU epilogue, bf16 output); backward is
   * one pass for the ReLU mask + bias gradient (device.linearActBackward, bf16 dz in place), then dW = dz^T x
   * (fp32, or bf16 under Note [bf16 gradients] in Model, into the gradient buffer; written instead of added when the
   * model skipped zeroGrad), then the gradients-ready signal (the trainer's bucket), then dx = dz W in bf16 into a
   * buffer shared between layers. The activation after this layer may run inside it: a ReLU ({@code fuseRelu}), or a
   * GELU ({@code fuseGelu}, Note [fused GELU]).
   */
  void enableFused(Tensor wMirror, Tensor bMirror, boolean fuseRelu, boolean fuseGelu, ScratchSource scratch,
      int ordinal) {
    if (fuseRelu && fuseGelu) {
      throw new IllegalArgumentException("linear " + name + ": one activation is fused, not two");
    }
    this.fused = true;
    this.ordinal = ordinal;
    this.wMirror = wMirror;
    this.bMirror = bMirror;
    this.fuseRelu = fuseRelu;
    this.fuseGelu = fuseGelu;
    this.scratch = scratch;
  }

  /** Whether the next backward writes its parameter gradients instead of adding them (fused path only). */
  void setOverwriteGrads(boolean overwrite) {
    if (overwrite && !fused) {
      throw new IllegalStateException("linear " + name + ": only the fused path can overwrite gradients");
    }
    this.overwriteGrads = overwrite;
  }

  boolean fused() {
    return fused;
  }

  /** Index of the weight in the model's parameter set (the first of this layer's entries). */
  int weightIndex() {
    return wIndex;
  }

  @Override
  public int[] outputShape(int[] inputShape) {
    if (inputShape.length != 1) {
      throw new IllegalArgumentException("linear expects a flat input (features), got " + Shape.str(inputShape)
          + "; put a flatten layer before it");
    }
    return new int[] {units};
  }

  @Override
  public void declare(String name, int[] inputShape, ParameterSet.Builder builder) {
    super.declare(name, inputShape, builder);
    this.in = inputShape[0];
    wIndex = builder.add(name + ".weight", units, in);
    if (bias) {
      bIndex = builder.add(name + ".bias", units);
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
    double bound = 1.0 / Math.sqrt(in);
    fillUniform(host, params.entries().get(wIndex), bound, rng);
    if (bias) {
      fillUniform(host, params.entries().get(bIndex), bound, rng);
    }
  }

  private static void fillUniform(float[] host, ParameterSet.Entry e, double bound, SplittableRandom rng) {
    for (long k = 0; k < e.numel(); k++) {
      host[Math.toIntExact(e.offset() + k)] = (float) ((rng.nextDouble() * 2 - 1) * bound);
    }
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    if (fused) {
      xLow = x.dtype() == DType.BFLOAT16 ? x : low("xLow", x);
      Tensor y = buffer("y", DType.BFLOAT16, new int[] {x.dim(0), units});
      if (fuseGelu) {
        preOut = buffer("pre", DType.BFLOAT16, new int[] {x.dim(0), units});
        device.linearForwardGelu(xLow, wMirror, bias ? bMirror : null, preOut, y);
      } else {
        device.linearForward(xLow, wMirror, bias ? bMirror : null, fuseRelu, y);
      }
      yOut = y;
      return y;
    }
    this.x = x;
    Tensor y = buffer("y", new int[] {x.dim(0), units});
    if (compute == DType.BFLOAT16) {
      xLow = low("xLow", x);
      wLow = low("wLow", w);
      device.matmul(xLow, false, wLow, true, y, 1f, 0f);
    } else {
      device.matmul(x, false, w, true, y, 1f, 0f);
    }
    if (bias) {
      device.addBias(y, b);
    }
    return y;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (fused) {
      return backwardFused(dy, needInputGrad);
    }
    Tensor dyIn = compute == DType.BFLOAT16 ? low("dyLow", dy) : dy;
    device.matmul(dyIn, true, compute == DType.BFLOAT16 ? xLow : x, false, dw, 1f, 1f); // dW += dy^T x
    if (bias) {
      device.biasGrad(dy, db);
    }
    gradientsReady();
    if (!needInputGrad) {
      return null;
    }
    Tensor dx = gradBuffer("dx", dev.sparktrainer.engine.DType.FLOAT32, new int[] {dy.dim(0), in});
    device.matmul(dyIn, false, compute == DType.BFLOAT16 ? wLow : w, false, dx, 1f, 0f); // dx = dy W
    return dx;
  }

  private Tensor backwardFused(Tensor dy, boolean needInputGrad) {
    int n = dy.dim(0);
    boolean acc = !overwriteGrads;
    // dz in place when dy is already a bf16 buffer of the next layer; a bf16 copy of the loss gradient else.
    Tensor dz = dy.dtype() == DType.BFLOAT16 ? dy : buffer("dz", DType.BFLOAT16, new int[] {n, units});
    if (fuseGelu) {
      device.linearGeluBackward(dy, preOut, dz, bias ? db : null, acc);
    } else {
      device.linearActBackward(dy, fuseRelu ? yOut : null, dz, bias ? db : null, acc);
    }
    device.matmul(dz, true, xLow, false, dw, 1f, acc ? 1f : 0f); // dW (+)= dz^T x
    gradientsReady();
    if (!needInputGrad) {
      return null;
    }
    // dx goes to the shared buffer that this layer's dz is not in: layer k writes slot k % 2, and layer
    // k - 1 works in place in it, then writes slot (k - 1) % 2.
    Tensor dx = scratch.get(ordinal & 1, new int[] {n, in});
    device.matmul(dz, false, wMirror, false, dx, 1f, 0f); // dx = dz W
    return dx;
  }
}
