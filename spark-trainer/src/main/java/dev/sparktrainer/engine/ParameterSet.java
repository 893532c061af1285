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
 */
public final class ParameterSet {
  /** Alignment of each tensor's offset, in elements. */
  public static final int ALIGN = 64;

  /** One named tensor of the set. */
  public record Entry(String name, int[] shape, long offset, long numel) {}

  private final List<Entry> entries;
  private final long totalElements;
  private final Tensor params; // (total)
  private final Tensor grads; // (total), same layout
  private final Tensor[] paramViews;
  private final Tensor[] gradViews;

  private ParameterSet(Device device, List<Entry> entries, long total) {
    this.entries = Collections.unmodifiableList(new ArrayList<>(entries));
    this.totalElements = total;
    int n = Math.toIntExact(Math.max(total, 1));
    this.params = device.allocate(DType.FLOAT32, n);
    this.grads = device.allocate(DType.FLOAT32, n);
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
    private final List<Entry> entries = new ArrayList<>();
    private long next;

    /** Adds a tensor and returns its index. Names must be unique. */
    public int add(String name, int... shape) {
      for (Entry e : entries) {
        if (e.name().equals(name)) {
          throw new IllegalArgumentException("duplicate parameter name " + name);
        }
      }
      long numel = Shape.numel(shape);
      entries.add(new Entry(name, shape.clone(), next, numel));
      next = (next + numel + ALIGN - 1) / ALIGN * ALIGN;
      return entries.size() - 1;
    }

    /** Allocates the parameter and gradient buffers on {@code device} (zero-filled). */
    public ParameterSet build(Device device) {
      return new ParameterSet(device, entries, next);
    }
  }

  public List<Entry> entries() {
    return entries;
  }

  /** Length of each flat buffer in elements (with alignment padding). */
  public long totalElements() {
    return totalElements;
  }

  /** Number of real parameters (without padding). */
  public long parameterCount() {
    long n = 0;
    for (Entry e : entries) {
      n += e.numel();
    }
    return n;
  }

  /** The flat parameter buffer. */
  public Tensor params() {
    return params;
  }

  /** The flat gradient buffer (same layout as {@link #params()}). */
  public Tensor grads() {
    return grads;
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
