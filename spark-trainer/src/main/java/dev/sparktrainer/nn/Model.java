package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.SplittableRandom;

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

  public Model(ModelSpec spec, Device device) {
    this(spec, device, dev.sparktrainer.engine.DType.FLOAT32);
  }

  /**
   * A model whose linear layers compute in {@code computeDType}: FLOAT32, or BFLOAT16 for mixed precision
   * (bf16 matmul inputs, fp32 accumulation; parameters, gradients and optimizer state stay fp32).
   */
  public Model(ModelSpec spec, Device device, dev.sparktrainer.engine.DType computeDType) {
    this.spec = spec;
    this.device = device;
    this.net = new Sequential(spec.newLayers());
    ParameterSet.Builder b = ParameterSet.builder();
    net.declare("", spec.input(), b);
    this.params = b.build(device);
    net.bind(device, params);
    for (Layer l : net.layers()) {
      if (l instanceof Linear lin) {
        lin.setComputeDType(computeDType);
      }
    }
  }

  /** Draws initial weights from {@code seed} (host side, deterministic) and uploads them. */
  public void initialize(long seed) {
    float[] host = new float[Math.toIntExact(params.totalElements())];
    net.initialize(params, host, new SplittableRandom(seed));
    device.upload(host, 0, params.params());
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

  /** logits/predictions (N, out) for x (N, input...). */
  public Tensor forward(Tensor x, Layer.Context ctx) {
    if (Shape.rowSize(x.shape()) != spec.inputSize()) {
      throw new IllegalArgumentException("model input " + x + " does not match the spec's input "
          + Shape.str(spec.input()));
    }
    int[] shape = Shape.withBatch(x.dim(0), spec.input());
    return net.forward(x.reshape(shape), ctx);
  }

  /** Accumulates parameter gradients for dOut = dL/d(output) of the last forward. */
  public void backward(Tensor dOut, Layer.Context ctx) {
    net.backward(dOut, ctx, false);
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
