package dev.sparktrainer.nn;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayDeque;
import java.util.EnumMap;
import java.util.IdentityHashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * Note [transient gradient buffers]: the gradients that flow backward between layers (dL/dx of one layer is
 * dL/dy of the one before) live only until the next layer back has used them, so instead of one buffer per
 * layer (ResNet-50 at batch 256: tens of GiB) a model draws them from this pool and gives them back. The rules,
 * which every layer's backward follows:
 * <ul>
 *   <li>backward never gives back its input dy; the caller does, after the call, unless the result shares dy's
 *       memory (a pass-through: Flatten's reshape, a fused-away ReLU, an identity shortcut). Sequential gives back
 *       the gradients between its layers; the model's loss gradient (dOut) is not the pool's;
 *   <li>a layer's result (its dx) and its scratch (a dtype cast of dy, a ReLU-masked dy) are drawn with {@link
 *       Layer#gradBuffer}; the scratch is given back before backward returns, the result by its consumer;
 *   <li>a gradient used by two consumers (a residual block's dy, read by both paths) is retained once more.
 * </ul>
 * Reuse is safe because every op runs in stream order on one device: a buffer given back is only written by
 * ops queued after the last reader of its old contents. A request takes the smallest free buffer of its dtype
 * that holds it, if that is at most twice its size (best fit, so a model's few large gradients and many small
 * ones share buffers), viewed in the requested shape; views of a pooled buffer count as the buffer
 * (Tensor#storage). After a model's backward every
 * buffer must be back ({@link #checkAllReturned}); a leak would grow memory every step, so it throws instead.
 * With a step memory plan (Note [step memory plan] in StepMemoryPlan), a step that replays the plan gets its
 * k-th buffer from the plan's region for it instead (the same size; released, it goes back to the plan, not to
 * the free lists), and the plan is told of every acquire and release.
 */
final class GradientPool {
  private final Device device;
  private final Map<DType, TreeMap<Long, ArrayDeque<Tensor>>> free = new EnumMap<>(DType.class); // by capacity
  private final Map<Object, Lease> live = new IdentityHashMap<>(); // storage -> buffer in use
  private int allocated;
  private StepMemoryPlan plan; // or null

  private static final class Lease {
    final Tensor root; // the pool's buffer, or the plan's region
    final boolean planned; // root is the plan's
    final int seq; // its number in the step for the plan, or -1
    int refs = 1;

    Lease(Tensor root, boolean planned, int seq) {
      this.root = root;
      this.planned = planned;
      this.seq = seq;
    }
  }

  GradientPool(Device device) {
    this.device = device;
  }

  /** Tells {@code plan} (null: none) of every acquire and release, and serves the acquires it planned. */
  void attachPlan(StepMemoryPlan plan) {
    this.plan = plan;
  }

  /** The model's step memory plan, or null. */
  StepMemoryPlan plan() {
    return plan;
  }

  /** A buffer of {@code shape} not in use, with one reference (contents undefined). */
  Tensor acquire(DType dtype, int[] shape) {
    long numel = Math.max(1, dev.sparktrainer.engine.Shape.numel(shape));
    int seq = plan == null ? -1 : plan.acquire(dtype, numel);
    Tensor root = plan == null ? null : plan.leaseRegion(seq);
    boolean planned = root != null;
    if (!planned) {
      TreeMap<Long, ArrayDeque<Tensor>> byCap = free.computeIfAbsent(dtype, d -> new TreeMap<>());
      Map.Entry<Long, ArrayDeque<Tensor>> fit = byCap.ceilingEntry(numel);
      if (fit != null && fit.getKey() <= 2 * numel) {
        root = fit.getValue().pop();
        if (fit.getValue().isEmpty()) {
          byCap.remove(fit.getKey());
        }
      } else {
        root = device.allocate(dtype, Math.toIntExact(numel));
        allocated++;
      }
    }
    live.put(root.storage(), new Lease(root, planned, seq));
    return root.view(0, shape);
  }

  /** One more reference to {@code t} when it is the pool's; no-op otherwise. */
  void retain(Tensor t) {
    Lease l = t == null ? null : live.get(t.storage());
    if (l != null) {
      l.refs++;
    }
  }

  /** Gives back one reference to {@code t} when it is the pool's (null and other tensors: no-op). */
  void release(Tensor t) {
    Lease l = t == null ? null : live.get(t.storage());
    if (l == null) {
      return;
    }
    if (--l.refs == 0) {
      live.remove(t.storage());
      if (plan != null && l.seq >= 0) {
        plan.released(l.seq);
      }
      giveBack(l);
    }
  }

  private void giveBack(Lease l) {
    if (!l.planned) {
      free.computeIfAbsent(l.root.dtype(), d -> new TreeMap<>()).computeIfAbsent(l.root.numel(),
          k -> new ArrayDeque<>()).push(l.root);
    }
  }

  /** Takes back every buffer still in use, whatever its references (after a step cut short: Model#discardStep). */
  void reclaimAll() {
    for (Lease l : live.values()) {
      giveBack(l);
    }
    live.clear();
  }

  /**
   * Frees every buffer not in use (the step memory plan has taken their place: Note [step memory plan]) and
   * returns their bytes, counted as the device allocates them (256-byte granules).
   */
  long freeIdle() {
    long bytes = 0;
    for (TreeMap<Long, ArrayDeque<Tensor>> byCap : free.values()) {
      for (ArrayDeque<Tensor> q : byCap.values()) {
        for (Tensor t : q) {
          bytes += StepMemoryPlan.align(t.numel() * t.dtype().bytes());
          device.free(t);
        }
      }
    }
    free.clear();
    return bytes;
  }

  /** Throws when a buffer is still in use (a layer broke the rules above). */
  void checkAllReturned() {
    if (!live.isEmpty()) {
      StringBuilder sb = new StringBuilder();
      for (Lease l : live.values()) {
        sb.append(sb.length() == 0 ? "" : ", ").append(l.root).append(" x").append(l.refs);
      }
      live.clear(); // do not report the same leak again; the buffers stay allocated until the device closes
      throw new IllegalStateException("gradient buffers still in use after backward (a layer did not give them "
          + "back; Note [transient gradient buffers]): " + sb);
    }
  }

  /** Buffers allocated so far (tests: the pool reuses instead of growing). */
  int allocated() {
    return allocated;
  }

  /** Whether two tensors share memory (a pass-through). */
  static boolean sameStorage(Tensor a, Tensor b) {
    return a != null && b != null && a.storage() == b.storage();
  }
}
