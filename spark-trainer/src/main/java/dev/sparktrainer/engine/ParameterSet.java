package dev.sparktrainer.engine;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * All parameters of a model in one flat device buffer, and all gradients in a second buffer with the same
 * layout (llm.c style): named tensors are views at fixed offsets. The optimizer is then one fused call over
 * the whole buffer, broadcast and all-reduce are one call each, and a checkpoint is one blob.
 *
 * <p>The two buffers belong to the device that allocated them (freed when it closes).
 *
 * <p>Offsets are aligned to {@link #ALIGN} elements (256 bytes in fp32) so every view suits vectorised
 * kernels and cuBLASLt.
 *
 * <p>Note [buffers]: state that a layer keeps but that is not trained (batch norm's running mean and
 * variance, PyTorch's "buffers") is declared with {@link Builder#addBuffer}. Buffers live in the same flat
 * parameter buffer, after every trainable tensor ({@link #trainableElements()} marks where they start), so
 * broadcast, checkpoints ({@code param/<name>}) and saved models carry them with no extra code, while the
 * optimizer steps only over the trainable prefix ({@link #trainableParams()}): weight decay and momentum
 * never touch them. Their gradients stay zero. {@link #entries()} keeps the order of declaration (so the
 * index {@code add} returned is the entry's index); offsets follow the order trainable-then-buffers.
 */
public final class ParameterSet {
  /** Alignment of each tensor's offset, in elements. */
  public static final int ALIGN = 64;

  /** One named tensor of the set; {@code trainable} is false for buffers (see Note [buffers]). */
  public record Entry(String name, int[] shape, long offset, long numel, boolean trainable) {
    /** A trainable entry. */
    public Entry(String name, int[] shape, long offset, long numel) {
      this(name, shape, offset, numel, true);
    }
  }

  private final List<Entry> entries;
  private final long totalElements;
  private final long trainableElements;
  private final Tensor params; // (total)
  private final Tensor grads; // (total), same layout
  private final Tensor[] paramViews;
  private final Tensor[] gradViews;

  private ParameterSet(Device device, List<Entry> entries, long trainable, long total, DType gradDType) {
    this.entries = Collections.unmodifiableList(new ArrayList<>(entries));
    this.totalElements = total;
    this.trainableElements = trainable;
    int n = Math.toIntExact(Math.max(total, 1));
    // registrable where the device was asked for it: the sharded optimizer's copy-engine collectives read and
    // write these (Note [copy-engine collectives] in cuda.NcclCommunicator)
    this.params = device.allocateRegistrable(DType.FLOAT32, n);
    this.grads = device.allocateRegistrable(gradDType, n);
    this.paramViews = new Tensor[entries.size()];
    this.gradViews = new Tensor[entries.size()];
    for (int k = 0; k < entries.size(); k++) {
      Entry e = entries.get(k);
      paramViews[k] = params.view(e.offset(), e.shape());
      gradViews[k] = grads.view(e.offset(), e.shape());
    }
  }

  /** Starts a layout. */
  public static Builder builder() {
    return new Builder();
  }

  /** Collects named shapes, then allocates the two buffers. */
  public static final class Builder {
    private final List<Entry> entries = new ArrayList<>(); // offsets assigned by build()

    /** Adds a trainable tensor and returns its index. Names must be unique. */
    public int add(String name, int... shape) {
      return add(name, shape, true);
    }

    /**
     * Adds a buffer: state saved with the parameters but never trained (see Note [buffers]). Returns its
     * index, like {@link #add}.
     */
    public int addBuffer(String name, int... shape) {
      return add(name, shape, false);
    }

    private int add(String name, int[] shape, boolean trainable) {
      for (Entry e : entries) {
        if (e.name().equals(name)) {
          throw new IllegalArgumentException("duplicate parameter name " + name);
        }
      }
      entries.add(new Entry(name, shape.clone(), -1, Shape.numel(shape), trainable));
      return entries.size() - 1;
    }

    /** How many tensors were added so far. */
    public int size() {
      return entries.size();
    }

    /** Allocates the parameter and gradient buffers on {@code device} (zero-filled; fp32 gradients). */
    public ParameterSet build(Device device) {
      return build(device, DType.FLOAT32);
    }

    /**
     * Allocates the fp32 parameter buffer and a gradient buffer of {@code gradDType} (FLOAT32, or BFLOAT16 for
     * Note [bf16 gradients] in nn.Model) on {@code device}, zero-filled.
     */
    public ParameterSet build(Device device, DType gradDType) {
      if (gradDType != DType.FLOAT32 && gradDType != DType.BFLOAT16) {
        throw new IllegalArgumentException("gradients must be float32 or bfloat16, got " + gradDType);
      }
      List<Entry> laid = new ArrayList<>(entries);
      long next = 0;
      long trainable = 0;
      for (boolean pass : new boolean[] {true, false}) {
        for (int k = 0; k < laid.size(); k++) {
          Entry e = laid.get(k);
          if (e.trainable() == pass) {
            laid.set(k, new Entry(e.name(), e.shape(), next, e.numel(), e.trainable()));
            next = (next + e.numel() + ALIGN - 1) / ALIGN * ALIGN;
          }
        }
        if (pass) {
          trainable = next;
        }
      }
      return new ParameterSet(device, laid, trainable, next, gradDType);
    }
  }

  public List<Entry> entries() {
    return entries;
  }

  /** Length of each flat buffer in elements (with alignment padding). */
  public long totalElements() {
    return totalElements;
  }

  /**
   * Length of the trainable prefix of each flat buffer (with alignment padding); buffers start here. Equals
   * {@link #totalElements()} when there are no buffers.
   */
  public long trainableElements() {
    return trainableElements;
  }

  /** Number of real trainable parameters (without padding or buffers), as PyTorch's sum of p.numel(). */
  public long parameterCount() {
    long n = 0;
    for (Entry e : entries) {
      n += e.trainable() ? e.numel() : 0;
    }
    return n;
  }

  /** Number of real buffer elements (running statistics; see Note [buffers]). */
  public long bufferCount() {
    long n = 0;
    for (Entry e : entries) {
      n += e.trainable() ? 0 : e.numel();
    }
    return n;
  }

  /** The flat parameter buffer. */
  public Tensor params() {
    return params;
  }

  /** The flat gradient buffer (same layout as {@link #params()}): FLOAT32, or BFLOAT16 (Note [bf16 gradients]). */
  public Tensor grads() {
    return grads;
  }

  /** The trainable prefix of {@link #params()} (the whole buffer when there are no buffers). */
  public Tensor trainableParams() {
    return prefix(params);
  }

  /** The trainable prefix of {@link #grads()} (the whole buffer when there are no buffers). */
  public Tensor trainableGrads() {
    return prefix(grads);
  }

  /**
   * The trainable prefix of a flat buffer with this layout (e.g. an optimizer state), or {@code flat} itself
   * when there are no buffers; null stays null.
   */
  public Tensor prefix(Tensor flat) {
    if (flat == null || trainableElements == totalElements) {
      return flat;
    }
    return flat.view(0, Math.toIntExact(trainableElements));
  }

  public Tensor param(int index) {
    return paramViews[index];
  }

  public Tensor grad(int index) {
    return gradViews[index];
  }

  /** Index of a named tensor, or -1. */
  public int indexOf(String name) {
    for (int k = 0; k < entries.size(); k++) {
      if (entries.get(k).name().equals(name)) {
        return k;
      }
    }
    return -1;
  }
}
