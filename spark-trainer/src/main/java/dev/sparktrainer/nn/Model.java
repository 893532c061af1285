package dev.sparktrainer.nn;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.StepTimeline;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.function.LongConsumer;

/**
 * A built model on one device: the layers of a {@link ModelSpec}, bound to one flat parameter buffer and one
 * flat gradient buffer. Initial values are drawn on the host from the seed, so every backend and every rank
 * starts from the same weights.
 */
public final class Model {
  private final ModelSpec spec;
  private final Device device;
  private final Sequential net;
  private final ParameterSet params;
  // Fused mixed-precision path (Note [fused linear path] in Linear): the flat bf16 mirror of the parameters,
  // the layers to run (activations folded into the linear before them are left out), two shared dx buffers.
  private final boolean fused;
  private final Tensor mirror; // (total) bf16, or null
  private final long[] stepOffsets; // per step: the lowest flat offset of its parameters, or -1: none
  private final List<Layer> steps; // layers that run, in order
  private StepTimeline layerMarks; // markLayers: a diagnostic, null unless asked
  private final Tensor[] dxSlots = new Tensor[2];
  private GradientPool pool; // transient gradients between layers (Note [transient gradient buffers]), or null
  private StepMemoryPlan plan; // Note [step memory plan], or null: off
  private int maxIn;
  private boolean overwritable; // every parameter entry belongs to a fused linear

  public Model(ModelSpec spec, Device device) {
    this(spec, device, dev.sparktrainer.engine.DType.FLOAT32);
  }

  /**
   * A model whose linear layers compute in {@code computeDType}: FLOAT32, or BFLOAT16 for mixed precision
   * (bf16 matmul inputs, fp32 accumulation; parameters, gradients and optimizer state stay fp32).
   */
  public Model(ModelSpec spec, Device device, dev.sparktrainer.engine.DType computeDType) {
    this(spec, device, computeDType, FUSE_RELU);
  }

  /**
   * A model whose linear layers compute in {@code computeDType} and whose parameter gradients are stored in
   * {@code gradientDType}: FLOAT32, or BFLOAT16 (Note [bf16 gradients]; only where it applies, else FLOAT32:
   * {@link #gradientDType()} says which).
   */
  public Model(ModelSpec spec, Device device, DType computeDType, DType gradientDType) {
    this(spec, device, computeDType, FUSE_RELU, gradientDType);
  }

  /** {@code fuseRelu}: whether ReLUs are fused into the layer before them (Note [fused ReLU]). */
  Model(ModelSpec spec, Device device, dev.sparktrainer.engine.DType computeDType, boolean fuseRelu) {
    this(spec, device, computeDType, fuseRelu, DType.FLOAT32);
  }

  // Note [bf16 gradients]: on the fused linear path (Note [fused linear path] in Linear) of a model whose every
  // parameter belongs to a linear layer, the flat gradient buffer may be bf16 instead of fp32. Each dW GEMM then
  // writes its product rounded to bf16, and each bias gradient its fp32 column sum rounded to bf16: the values
  // that PyTorch's autocast computes for the bf16 copies of the weight and bias before it widens them into the fp32
  // .grad, so at W = 1 the optimizer (fp32 parameters and momentum) reads the same numbers. What changes is the
  // bytes: the dW GEMMs write half (the benchmark MLP's 8192 x 8192 ones: 765 -> 750 us on an H100), the optimizer
  // reads 20 instead of 22 bytes per parameter (1.68 -> 1.54 ms per step), the gradient buffer takes half the
  // memory (the MLP's peak 3.27 -> 2.87 GiB), and at W > 1 the
  // all-reduce moves half the bytes with no conversion passes (Trainer#bf16GradientAllReduce's rounding and
  // widening are not needed): NCCL sums the bf16 values, as DDP's bf16 compression hook does, one rounding per
  // addition where DDP sums in fp32. Not with gradient accumulation over micro-batches (the Trainer refuses it: the
  // sum would be rounded to bf16 at every micro-batch, where PyTorch accumulates in fp32). Elsewhere (the CPU
  // engine, fp32 compute, convolutions or other parameter layers) the gradients stay fp32. Measured (benchmarks/
  // README.md, 2 H100s): the MLP 1.21-1.22x -> 1.24-1.25x PyTorch at W = 1, W = 2 scaling 79-80% -> 82-84%.

  Model(ModelSpec spec, Device device, DType computeDType, boolean fuseRelu, DType gradientDType) {
    this.spec = spec;
    this.device = device;
    this.net = new Sequential(spec.newLayers());
    ParameterSet.Builder b = ParameterSet.builder();
    net.declare("", spec.input(), b);
    boolean fusedPath = computeDType == DType.BFLOAT16 && device.prefersFusedLinear();
    boolean allLinear = linearEntries(net) == b.size(); // every parameter entry belongs to a top-level linear
    boolean lowGrads = gradientDType == DType.BFLOAT16 && fusedPath && allLinear;
    this.params = b.build(device, lowGrads ? DType.BFLOAT16 : DType.FLOAT32);
    net.bind(device, params);
    if (fuseRelu) {
      fuseRelus(net);
    }
    pool = new GradientPool(device);
    net.attachPool(pool);
    planMemory(memoryPlanEnabled() ? StepMemoryPlan.MIN_BYTES : -1);
    for (Layer l : net.layers()) {
      if (l instanceof Linear lin) {
        lin.setComputeDType(computeDType);
      }
    }
    this.fused = fusedPath;
    List<Layer> run = new ArrayList<>();
    if (fused) {
      mirror = device.allocateRegistrable(dev.sparktrainer.engine.DType.BFLOAT16,
          Math.toIntExact(Math.max(1, params.totalElements()))); // Note [copy-engine collectives] (NcclCommunicator)
      device.registerMirror(params.params(), mirror);
      List<Layer> ls = net.layers();
      int ordinal = 0;
      for (int k = 0; k < ls.size(); k++) {
        Layer l = ls.get(k);
        run.add(l);
        if (l instanceof Linear lin) {
          boolean relu = k + 1 < ls.size() && ls.get(k + 1) instanceof Activation a && a.kind() == Activation.Kind.RELU;
          boolean gelu = fuseGeluEnabled() && k + 1 < ls.size() && ls.get(k + 1) instanceof Activation g
              && g.kind() == Activation.Kind.GELU; // Note [fused GELU] in Linear
          int wi = lin.weightIndex();
          ParameterSet.Entry we = params.entries().get(wi);
          Tensor wm = mirror.view(we.offset(), we.shape());
          Tensor bm = null;
          if (wi + 1 < params.entries().size() && params.entries().get(wi + 1).name().equals(lin.name() + ".bias")) {
            ParameterSet.Entry be = params.entries().get(wi + 1);
            bm = mirror.view(be.offset(), be.shape());
          }
          lin.enableFused(wm, bm, relu, gelu, this::dxBuffer, ordinal++);
          maxIn = Math.max(maxIn, we.shape()[1]);
          if (relu || gelu) {
            k++; // the activation runs inside the linear
          }
        }
      }
      overwritable = allLinear;
      for (Layer l : ls) {
        enableMixedConvolutions(l);
      }
    } else {
      mirror = null;
      run.addAll(net.layers());
    }
    this.steps = List.copyOf(run);
    this.stepOffsets = new long[steps.size()];
    for (int k = 0; k < steps.size(); k++) {
      stepOffsets[k] = -1;
      String prefix = steps.get(k).name() + ".";
      for (ParameterSet.Entry e : params.entries()) {
        if (e.trainable() && e.name().startsWith(prefix) && (stepOffsets[k] < 0 || e.offset() < stepOffsets[k])) {
          stepOffsets[k] = e.offset();
        }
      }
    }
  }

  /** The parameter entries of the top-level linear layers (a weight, and a bias when it has one). */
  private static int linearEntries(Sequential net) {
    int n = 0;
    for (Layer l : net.layers()) {
      if (l instanceof Linear lin) {
        n += lin.hasBias() ? 2 : 1;
      }
    }
    return n;
  }

  /** The dtype of the parameter gradients: FLOAT32, or BFLOAT16 under Note [bf16 gradients]. */
  public DType gradientDType() {
    return params.grads().dtype();
  }

  // Note [fused ReLU]: a ReLU right after a convolution, a per-rank batch norm or a residual block (in the same
  // Sequential) is computed by that layer: in the convolution's bias pass, in batch norm's normalising pass
  // (and its backward, through Device#batchNormBackwardRelu), in the residual add; the Activation layer stays
  // in the model (names, parameters and checkpoints are unchanged) and passes its tensor through. That saves a
  // pass over the activation each way and the ReLU's two buffers. The numbers are the same as unfused: the
  // ReLU's backward masks with its output y > 0, which is where its input was > 0. Synchronised batch norm
  // keeps its ReLU apart. -Dsparktrainer.nn.fuseRelu=false turns the fusion off (for comparisons).
  static final boolean FUSE_RELU = Boolean.parseBoolean(System.getProperty("sparktrainer.nn.fuseRelu", "true"));

  /**
   * -Dsparktrainer.nn.memoryPlan=false turns Note [step memory plan] (in StepMemoryPlan) off: every layer keeps
   * its buffers for good and the gradients come from the dynamic pool, as before (for comparisons). Read when a
   * model is built; default true.
   */
  public static final String MEMORY_PLAN_PROPERTY = "sparktrainer.nn.memoryPlan";

  /**
   * A GELU after a linear runs inside it on the fused path (Note [fused GELU] in Linear) unless
   * -Dsparktrainer.nn.fuseGelu=false.
   */
  public static final String FUSE_GELU_PROPERTY = "sparktrainer.nn.fuseGelu";

  /** Whether models built now fuse a GELU after a linear into it ({@link #FUSE_GELU_PROPERTY}, default true). */
  public static boolean fuseGeluEnabled() {
    return !"false".equalsIgnoreCase(System.getProperty(FUSE_GELU_PROPERTY, "true").trim());
  }

  static boolean memoryPlanEnabled() {
    return Boolean.parseBoolean(System.getProperty(MEMORY_PLAN_PROPERTY, "true"));
  }

  /**
   * What Note [step memory plan] built for one input of the training step: {@code input} (dtype and shape, e.g.
   * "float32(256, 150528)"), the bytes of its slab of each dtype, the most bytes its buffers and gradients
   * had live at once in the recorded step (the slabs hold at least that; the rest is what the greedy placement
   * could not pack), the bytes of the allocations it replaced (the layers' buffers it took over and the gradient
   * pool's buffers, all freed), and how many layer buffers and gradients it placed.
   */
  public record PlannedMemory(String input, Map<DType, Long> slabBytes, long maxLiveBytes, long replacedBytes,
      int buffers, int gradients) {
    public PlannedMemory {
      slabBytes = java.util.Collections.unmodifiableMap(new java.util.TreeMap<>(slabBytes));
    }

    /** The slabs' bytes, all dtypes together. */
    public long totalSlabBytes() {
      return slabBytes.values().stream().mapToLong(Long::longValue).sum();
    }
  }

  /**
   * The step memory plans built so far, one per input of a training step, in order (Note [step memory plan]);
   * empty when the plan is off or no training step has finished yet.
   */
  public List<PlannedMemory> memoryPlans() {
    return plan == null ? List.of() : plan.built();
  }

  /**
   * Replaces the step memory plan before the first step (tests): layer buffers of at least {@code minBytes} are
   * planned; negative: no plan.
   */
  void planMemory(long minBytes) {
    plan = minBytes < 0 || pool == null ? null : new StepMemoryPlan(device, pool, minBytes);
    if (pool != null) {
      pool.attachPlan(plan);
    }
  }

  /** The step memory plan, or null (tests). */
  StepMemoryPlan memoryPlan() {
    return plan;
  }

  /** Fuses every (convolution | per-rank batch norm | residual block, ReLU) pair inside {@code seq}. */
  static void fuseRelus(Sequential seq) {
    List<Layer> ls = seq.layers();
    for (int k = 0; k < ls.size(); k++) {
      Layer l = ls.get(k);
      if (l instanceof Sequential inner) {
        fuseRelus(inner);
      } else if (l instanceof Residual r) {
        fuseRelus(r.main());
        if (r.shortcut() != null) {
          fuseRelus(r.shortcut());
        }
      }
      if (k + 1 < ls.size() && ls.get(k + 1) instanceof Activation a && a.kind() == Activation.Kind.RELU) {
        boolean fused = true;
        if (l instanceof Conv2d conv) {
          conv.fuseRelu();
        } else if (l instanceof BatchNorm2d bn && !bn.sync()) {
          bn.fuseRelu();
        } else if (l instanceof Residual r) {
          r.fuseRelu();
        } else {
          fused = false;
        }
        if (fused) {
          a.absorbIntoPrevious();
        }
      }
    }
  }

  /** Mixed precision for every convolution inside {@code l} (Note [mixed-precision convolutions] in Conv2d). */
  private void enableMixedConvolutions(Layer l) {
    if (l instanceof Conv2d conv) {
      ParameterSet.Entry we = params.entries().get(conv.weightIndex());
      conv.enableMixed(mirror.view(we.offset(), we.shape()), device.supportsChannelsLast());
    } else if (l instanceof Sequential seq) {
      for (Layer c : seq.layers()) {
        enableMixedConvolutions(c);
      }
    } else if (l instanceof Residual r) {
      enableMixedConvolutions(r.main());
      if (r.shortcut() != null) {
        enableMixedConvolutions(r.shortcut());
      }
    }
  }

  /** The shared bf16 dx buffer {@code slot} (0 or 1) viewed as {@code shape}; sized for the widest input. */
  private Tensor dxBuffer(int slot, int[] shape) {
    long need = (long) shape[0] * maxIn;
    if (dxSlots[slot] == null || dxSlots[slot].numel() < need) {
      // First backward (or a larger batch): the old buffer, if any, stays allocated until the device closes.
      dxSlots[slot] = device.allocate(dev.sparktrainer.engine.DType.BFLOAT16, Math.toIntExact(need));
    }
    return dxSlots[slot].view(0, shape);
  }

  /**
   * Note [bf16 input]: the dtype the trainer stages the input batches in. FLOAT32 by default. With
   * -Dsparktrainer.train.bf16Input=true (read per call), BFLOAT16 when the model's first layer is a mixed-precision
   * convolution, whose forward rounds an fp32 input to bf16 first anyway (the host rounds the same way, to nearest
   * even: CpuDevice.roundBf16), so the numbers are unchanged (CudaBf16InputTest) while the input slots and the
   * host-to-device copies take half the bytes (ResNet-50 at batch 256: two 154 MB fp32 slots become 77 MB each,
   * peak 11.40 -> 11.26 GiB). Not the default because the host's element-by-element rounding is slower than the
   * bulk fp32 copy: measured on H100, the GPU then waited for the input (ResNet-50 0.3 -> 1.0 ms per step, the
   * Fashion-MNIST CNN at batch 512 0.3 -> 1.1 ms: 234k instead of ~400k samples/s), when the trainer's thread did
   * the rounding. The loader threads do it now (Note [bf16 input on the loader threads] in data.BatchLoader); the
   * default stays until that is measured on a GPU.
   */
  public dev.sparktrainer.engine.DType inputDType() {
    Layer first = net.layers().isEmpty() ? null : net.layers().get(0);
    boolean low = first instanceof Conv2d c && c.roundsInputToBf16()
        && Boolean.getBoolean("sparktrainer.train.bf16Input");
    return low ? dev.sparktrainer.engine.DType.BFLOAT16 : dev.sparktrainer.engine.DType.FLOAT32;
  }

  /**
   * The dtype the caller should give dL/d(output) in: BFLOAT16 on the fused path (the last linear then
   * works in place on it, as PyTorch's autocast hands a bf16 gradient to a bf16 linear), else FLOAT32.
   */
  public dev.sparktrainer.engine.DType outputGradDType() {
    return fused ? dev.sparktrainer.engine.DType.BFLOAT16 : dev.sparktrainer.engine.DType.FLOAT32;
  }

  /**
   * Whether {@link #backward(Tensor, Layer.Context, boolean, LongConsumer)} can write the parameter gradients
   * instead of adding them (so the step needs no zeroGrad): true on the fused path, where every layer with
   * parameters is a fused linear (a model with other parameter layers, or buffers, keeps zeroGrad).
   */
  public boolean canOverwriteGradients() {
    return fused && overwritable;
  }

  /**
   * Whether forward and backward read the parameters only through {@link #parameterMirror()} (the fused path with
   * every parameter in a fused linear), never the fp32 values (Note [sharded optimizer] in train.Trainer).
   */
  public boolean readsParametersOnlyFromMirror() {
    return canOverwriteGradients(); // the same condition: every parameter in a fused linear
  }

  /** Draws initial weights from {@code seed} (host side, deterministic) and uploads them. */
  public void initialize(long seed) {
    float[] host = new float[Math.toIntExact(params.totalElements())];
    net.initialize(params, host, new SplittableRandom(seed));
    device.upload(host, 0, params.params());
  }

  /** Layers keep their own gradient buffers instead of the pool's, without a step memory plan (tests). */
  void detachGradientPool() {
    net.attachPool(null);
    pool = null;
    plan = null;
  }

  /** The gradient pool, or null (tests). */
  GradientPool gradientPool() {
    return pool;
  }

  /** The top-level layers, in order (tests look inside). */
  List<Layer> layers() {
    return net.layers();
  }

  public ModelSpec spec() {
    return spec;
  }

  public Device device() {
    return device;
  }

  public ParameterSet parameters() {
    return params;
  }

  /**
   * The flat bf16 mirror of the parameters that the mixed-precision path computes with (the parameters' layout), or
   * null when this model has none (fp32, or no fused or mixed layer).
   */
  public Tensor parameterMirror() {
    return mirror;
  }

  /** logits/predictions (N, out) for x (N, input...). */
  public Tensor forward(Tensor x, Layer.Context ctx) {
    if (Shape.rowSize(x.shape()) != spec.inputSize()) {
      throw new IllegalArgumentException("model input " + x + " does not match the spec's input "
          + Shape.str(spec.input()));
    }
    int[] shape = Shape.withBatch(x.dim(0), spec.input());
    if (plan != null) {
      plan.beginStep(x, ctx.training()); // Note [step memory plan]
    }
    Tensor h = x.reshape(shape);
    if (!fused && layerMarks == null) {
      h = net.forward(h, ctx);
    } else {
      if (fused) {
        device.refreshMirror(params.params(), mirror);
      }
      for (Layer l : steps) {
        h = l.forward(h, ctx);
        if (layerMarks != null) {
          layerMarks.mark("forward " + l.name());
        }
      }
    }
    if (plan != null) {
      plan.endForward(h); // the caller may read the output after backward: it stays out of the plan
    }
    return h;
  }

  /**
   * The offsets {@link #backward(Tensor, Layer.Context, boolean, LongConsumer)} reports gradients final from (each
   * top-level layer's lowest parameter offset), ascending.
   */
  public long[] gradientReadyOffsets() {
    return java.util.Arrays.stream(stepOffsets).filter(o -> o >= 0).sorted().distinct().toArray();
  }

  /** Accumulates parameter gradients for dOut = dL/d(output) of the last forward. */
  public void backward(Tensor dOut, Layer.Context ctx) {
    backward(dOut, ctx, false, null);
  }

  /**
   * Backward with two options for the trainer. {@code overwrite}: write the parameter gradients instead of
   * adding them (only when {@link #canOverwriteGradients()}; the caller then skips zeroGrad). {@code readyFrom}
   * (may be null): called during backward with offset o each time the gradients in [o, total) of the flat
   * buffer became final (layers finish from the last one back, so the ready region only grows downwards).
   */
  public void backward(Tensor dOut, Layer.Context ctx, boolean overwrite, LongConsumer readyFrom) {
    if (overwrite && !canOverwriteGradients()) {
      throw new IllegalStateException("gradients can only be overwritten on the fused path of an all-linear model");
    }
    if (!fused && readyFrom == null && layerMarks == null) {
      for (Layer l : steps) {
        l.onGradientsReady(null);
      }
      net.runBackward(dOut, ctx, false);
      endStep();
      return;
    }
    Tensor dy = dOut;
    for (int k = steps.size() - 1; k >= 0; k--) {
      Layer l = steps.get(k);
      if (l instanceof Linear lin) {
        if (fused) {
          lin.setOverwriteGrads(overwrite);
        }
        long offset = params.entries().get(lin.weightIndex()).offset();
        lin.onGradientsReady(readyFrom == null ? null : () -> readyFrom.accept(offset));
      }
      Tensor next = l.runBackward(dy, ctx, k > 0);
      if (dy != dOut && pool != null && !GradientPool.sameStorage(next, dy)) {
        pool.release(dy); // Note [transient gradient buffers]
      }
      dy = next;
      if (!(l instanceof Linear) && readyFrom != null && stepOffsets[k] >= 0) {
        readyFrom.accept(stepOffsets[k]); // this step's parameters (and all after them) are final
      }
      if (layerMarks != null) {
        layerMarks.mark("backward " + l.name());
      }
    }
    endStep();
  }

  /**
   * A diagnostic: marks {@code timeline} after each top-level layer's forward and backward (phases "forward
   * NAME", "backward NAME"), so the device time of a step splits by layer; null (the default) stops it.
   * The marks cost an event each; a CUDA-graph step must not be captured with them.
   */
  public void markLayers(StepTimeline timeline) {
    this.layerMarks = timeline;
  }

  /** The end of backward: every gradient must be back; a recorded step gets its memory plan now. */
  private void endStep() {
    if (pool != null) {
      pool.checkAllReturned();
    }
    if (plan != null) {
      plan.endStep(); // Note [step memory plan]: before any later step can be captured as a CUDA graph
    }
  }

  /**
   * Forgets what a step cut short by an exception left behind, so that the step can run again: the transient
   * gradient buffers it still held go back to the pool (Note [transient gradient buffers]), and the step memory
   * plan drops the step's recording or replay (Note [step memory plan]; the plan itself stays). For a caller that
   * recovers from the exception and discards the step's device work, as the trainer does when a CUDA graph
   * capture fails (Note [CUDA graphs] in train.Trainer); the buffers' contents are undefined.
   */
  public void discardStep() {
    if (pool != null) {
      pool.reclaimAll();
    }
    if (plan != null) {
      plan.discardStep();
    }
  }

  /** Zeroes the gradient buffer (one fill over the flat buffer). */
  public void zeroGrad() {
    device.fill(params.grads(), 0f);
  }

  /** A host copy of the flat parameter buffer. */
  public float[] parametersToHost() {
    float[] host = new float[Math.toIntExact(params.totalElements())];
    device.download(params.params(), host, 0);
    return host;
  }

  /** Loads a host copy of the flat parameter buffer (same layout). */
  public void loadParameters(float[] host) {
    if (host.length != params.totalElements()) {
      throw new IllegalArgumentException("parameter array has " + host.length + " elements, the model needs "
          + params.totalElements());
    }
    device.upload(host, 0, params.params());
  }
}
