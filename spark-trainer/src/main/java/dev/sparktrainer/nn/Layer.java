package dev.sparktrainer.nn;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.HashMap;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * A layer with an explicit forward and a backward that mirrors it. Layers know no backend: they call the op
 * set of the {@link Device} they were bound to. Parameters are views into the model's flat buffers.
 *
 * <p>Lifecycle: {@link #outputShape} (shape inference) -> {@link #declare} (parameter shapes) -> {@link #bind}
 * (views + device) -> {@link #initialize} (host-side initial values) -> forward/backward.
 */
public abstract class Layer {
  protected Device device;
  protected String name;
  private final Map<String, Tensor> buffers = new HashMap<>();
  private Runnable gradientsReadyListener;
  GradientPool pool; // the model's transient gradient buffers, or null (a layer used on its own)

  /** Per-sample output shape for a per-sample input shape; throws with a clear message when invalid. */
  public abstract int[] outputShape(int[] inputShape);

  /** Registers this layer's parameters (name-prefixed) in the flat layout. Default: none. */
  public void declare(String name, int[] inputShape, ParameterSet.Builder builder) {
    this.name = name;
  }

  /** Takes views of its parameters and gradients. */
  public void bind(Device device, ParameterSet params) {
    this.device = device;
  }

  /** Writes initial parameter values into {@code host}, laid out like the flat buffer. Default: none. */
  public void initialize(ParameterSet params, float[] host, SplittableRandom rng) {}

  /** y = f(x). x is (N, ...); the returned tensor stays valid until the next forward with this batch size. */
  public abstract Tensor forward(Tensor x, Context ctx);

  /**
   * Given dL/dy for the last forward, adds this layer's parameter gradients into the gradient buffer and
   * returns dL/dx (or null when {@code needInputGrad} is false, for the first layer).
   */
  public abstract Tensor backward(Tensor dy, Context ctx, boolean needInputGrad);

  /**
   * {@link #backward}, then tells the model's step memory plan that this layer's buffers are dead until the next
   * forward (Note [step memory plan] in StepMemoryPlan). Containers and the model run their layers' backward
   * through this, never backward itself.
   */
  final Tensor runBackward(Tensor dy, Context ctx, boolean needInputGrad) {
    Tensor dx = backward(dy, ctx, needInputGrad);
    StepMemoryPlan plan = plan();
    if (plan != null) {
      plan.backwardEnded(this);
    }
    return dx;
  }

  /** The model's step memory plan (reached through its gradient pool), or null. */
  StepMemoryPlan plan() {
    return pool == null ? null : pool.plan();
  }

  /** The layer's name inside its model, e.g. "0.linear". */
  public String name() {
    return name;
  }

  /** A reusable device buffer for this layer, keyed by purpose and batch shape (no allocation per step). */
  protected Tensor buffer(String key, int[] shape) {
    return buffer(key, dev.sparktrainer.engine.DType.FLOAT32, shape);
  }

  /**
   * {@code t} itself when it already has {@code dtype}, else a copy of it converted to {@code dtype} in the
   * buffer {@code key} (mixed precision: a layer whose op needs one dtype for all its activations).
   */
  protected Tensor as(String key, Tensor t, dev.sparktrainer.engine.DType dtype) {
    return t.dtype() == dtype ? t : copyInto(t, buffer(key, dtype, t.shape()));
  }

  /** c after copying (and converting) t into it. */
  private Tensor copyInto(Tensor t, Tensor c) {
    device.copy(t, c);
    return c;
  }

  /**
   * {@link #buffer(String, int[])} of a given dtype. Inside a model, the step memory plan may put it in a region of
   * its slab after the first training step (Note [step memory plan] in StepMemoryPlan): its contents must not be
   * needed before this layer's next forward once this layer's backward has returned.
   */
  protected Tensor buffer(String key, dev.sparktrainer.engine.DType dtype, int[] shape) {
    String k = key + dtype + Shape.str(shape);
    Tensor t = ownBuffer(k, dtype, shape);
    StepMemoryPlan plan = plan();
    if (plan != null) {
      plan.used(this, k, t);
    }
    return t;
  }

  /**
   * A {@link #buffer} that the step memory plan leaves alone (Note [step memory plan] in StepMemoryPlan): for one
   * that a collective reads or writes on another stream.
   */
  protected Tensor unplannedBuffer(String key, dev.sparktrainer.engine.DType dtype, int[] shape) {
    return ownBuffer(key + dtype + Shape.str(shape), dtype, shape);
  }

  private Tensor ownBuffer(String k, dev.sparktrainer.engine.DType dtype, int[] shape) {
    Tensor t = buffers.get(k);
    if (t == null) {
      t = device.allocate(dtype, shape);
      buffers.put(k, t);
    }
    return t;
  }

  /** Forgets buffer {@code k} if it is {@code t}: the step memory plan frees it (Note [step memory plan]). */
  void dropBuffer(String k, Tensor t) {
    buffers.remove(k, t);
  }

  /** Buffer {@code k} is {@code region} of the step memory plan's slab from now on (Note [step memory plan]). */
  void installBuffer(String k, Tensor region) {
    buffers.put(k, region);
  }

  /**
   * A transient gradient buffer (Note [transient gradient buffers] in GradientPool): from the model's pool, or,
   * for a layer used outside a model, this layer's own buffer {@code key}.
   */
  protected Tensor gradBuffer(String key, dev.sparktrainer.engine.DType dtype, int[] shape) {
    return pool != null ? pool.acquire(dtype, shape) : buffer(key, dtype, shape);
  }

  /** Gives back a gradient buffer this layer is done with (no-op for tensors that are not the pool's). */
  protected void releaseGrad(Tensor t) {
    if (pool != null) {
      pool.release(t);
    }
  }

  /** One more reference to a pooled gradient (a second consumer). */
  protected void retainGrad(Tensor t) {
    if (pool != null) {
      pool.retain(t);
    }
  }

  /**
   * {@code t} itself when it has {@code dtype}, else a converted copy in a transient gradient buffer (given back
   * with {@link #releaseGrad} unless it is {@code t}).
   */
  protected Tensor gradAs(String key, Tensor t, dev.sparktrainer.engine.DType dtype) {
    return t.dtype() == dtype ? t : copyInto(t, gradBuffer(key, dtype, t.shape()));
  }

  /**
   * Whether this layer's backward reads the output its last forward returned. Default true; layers that answer
   * false let a residual block add its shortcut into their output in place (Residual, Note [in-place residual
   * add]).
   */
  boolean backwardReadsOutput() {
    return true;
  }

  /** Uses {@code pool} for this layer's transient gradients (and its children's). */
  void attachPool(GradientPool pool) {
    this.pool = pool;
  }

  /**
   * Sets who is told, during backward, the moment this layer's parameter gradients are final (the trainer
   * starts all-reducing their bucket while backward goes on). Null: nobody.
   */
  public void onGradientsReady(Runnable listener) {
    this.gradientsReadyListener = listener;
  }

  /** Layers with parameters call this in backward once their gradients are written (before computing dx). */
  protected void gradientsReady() {
    if (gradientsReadyListener != null) {
      gradientsReadyListener.run();
    }
  }

  /** What forward and backward need to know about the step. */
  public static final class Context {
    final boolean training;
    final long seed;
    final long step;
    final Communicator comm;

    /** A context without a communicator (one rank, or layers that never talk to other ranks). */
    public Context(boolean training, long seed, long step) {
      this(training, seed, step, null);
    }

    /**
     * {@code comm}: the job's communicator (the trainer passes its own), for layers that reduce across ranks
     * during forward/backward (synchronised batch norm); null = none, such layers then work on this rank's
     * batch alone. Every rank must run the same layers in the same order with it (collective order).
     */
    public Context(boolean training, long seed, long step, Communicator comm) {
      this.training = training;
      this.seed = seed;
      this.step = step;
      this.comm = comm;
    }

    /** The job's communicator, or null. */
    public Communicator comm() {
      return comm;
    }

    public boolean training() {
      return training;
    }

    public long seed() {
      return seed;
    }

    public long step() {
      return step;
    }
  }
}
