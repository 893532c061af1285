package dev.sparktrainer.nn;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.EnumMap;
import java.util.HashMap;
import java.util.HashSet;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Note [step memory plan]: a training step's device memory, laid out once, statically. Lifetimes in a step
 * (forward, then backward), which hold for Sequential chains and Residual blocks: a layer's buffers ({@link
 * Layer#buffer}: its output, its casts, its NHWC filter copy) are written by its forward and read only by its own
 * backward and by the forward and backward of layers after it, and all of those backwards run before its own. So
 * every such buffer is dead from the end of its owner's backward until the next forward; the transient
 * gradients (Note [transient gradient buffers] in GradientPool) live from acquire to release. Kept out, as
 * before: the storage of the tensor {@link Model#forward} returns (the trainer reads it after backward),
 * buffers below {@link #MIN_BYTES} (and {@link Layer#unplannedBuffer}s: synchronised batch norm's collective
 * buffers), buffers first used in backward (a cast of the incoming gradient), the fused linear path's shared dx
 * buffers, and the parameters (batch norm's running statistics are parameter-set buffers, not layer buffers).
 * <ol>
 *   <li>Record. The first training step with a given input (dtype and shape) runs as before, and this class puts
 *       on one clock: each buffer's first use in forward, each layer's end of backward ({@link
 *       Layer#runBackward}, which the containers and the model call instead of backward), each gradient's acquire
 *       and release. A buffer is freed ({@link Device#free}) as soon as its owner's backward ends, so the first
 *       step already peaks near what is live at once, not at the sum of all buffers.
 *   <li>Plan, at the end of that backward ({@link #endStep}, from Model#backward, before the trainer's later
 *       steps can capture a CUDA graph: none may allocate or free). Intervals are [first use, end of the owner's
 *       backward] and [acquire, release]. One slab per dtype (the CPU engine's tensors cannot reinterpret one);
 *       offsets greedy by size ({@link #place}: largest first, the lowest 256-byte-aligned offset clear of the
 *       placed items it meets in time). The pool's gradient buffers are freed, the slabs allocated, and each
 *       planned buffer becomes a {@link Tensor#region} of its slab, kept in its layer's map, so {@link
 *       Layer#buffer} returns it from then on; regions keep storages apart for the code that compares them (the
 *       pool's leases, pass-throughs, the in-place residual add), exactly as separate allocations did.
 *   <li>Replay, every later step with that input: the pool serves its k-th acquire from the k-th lease's region.
 *       Each end of backward, acquire (dtype, size) and release is checked against the recording; at the first
 *       difference the step goes off plan: later acquires come from the dynamic pool again. That is safe: the
 *       regions handed out so far were placed for the same events up to that point, so they share memory only
 *       with buffers whose owners' backward had ended and with gradients already released, none of which the step
 *       uses again (that is why buffers first used in backward, whose place among the events another step could
 *       move, stay out).
 * </ol>
 * Reuse is safe for the reason the pool's is: all ops run in stream order on the device's one compute stream, so a
 * region is written again only by ops queued after the last reader of its old contents. Another input shape gets
 * a plan of its own (recorded the first time it trains); a buffer whose key does not depend on the batch (the
 * NHWC filter) stays in the first plan's slab, which is safe because such buffers never share memory with each
 * other: they are all live at the end of forward. A forward buffer shares memory with another one only when its
 * life ended in forward ({@link #deadAfterForward}: a residual block's shortcut output, after the add) before the
 * other's first use; a forward in evaluation mode (no gradients) runs the layers in the same order, so it may use
 * the planned buffers between steps. {@link Model#discardStep} (a failed CUDA graph
 * capture) drops the running recording or replay; the plan itself is unchanged. -Dsparktrainer.nn.memoryPlan=false
 * turns it off (Model#MEMORY_PLAN_PROPERTY).
 */
final class StepMemoryPlan {
  /** Buffers smaller than this stay the layers' own (the gradients are all planned: they cost nothing more). */
  static final long MIN_BYTES = 1L << 20;
  /** Offsets and sizes in a slab are multiples of this (the CUDA arena's granularity: vectorised access). */
  static final long ALIGN = 256;

  private final Device device;
  private final GradientPool pool;
  private final long minBytes;
  private final Map<String, Plan> plans = new HashMap<>(); // by the step's input: dtype and shape
  private final Set<String> unplannable = new HashSet<>(); // inputs whose plan could not be built
  private final Map<Object, BufferKey> regionKeys = new IdentityHashMap<>(); // planned storage -> its buffer
  /** Whether {@link #deadAfterForward} ends lifetimes (tests compare with it off). */
  boolean forwardDeaths = true;
  private final List<Model.PlannedMemory> built = new ArrayList<>();
  // The running step.
  private Recording rec; // recording its events, or null
  private Plan plan; // replaying it, or null
  private boolean inBackward; // Model#forward has returned
  private boolean onPlan; // replay: every event so far was the recorded one
  private int cursor; // replay: index of the next recorded event
  private int leases; // gradients acquired so far
  private long replayedSteps;
  private long offPlanSteps;

  /** A plan for one input: what its step must do, and the regions its gradients get. */
  private record Plan(Object[] events, Tensor[] leaseRegions) {}

  /** Events besides the end of a layer's backward (recorded as the layer itself). */
  private record Acquire(DType dtype, long numel) {}

  private record Release(int lease) {}

  private record BufferKey(Layer owner, String key) {}

  /** A buffer whose last reader ran in forward ({@link #deadAfterForward}). */
  private record Consumed(BufferKey buffer) {}

  /** A layer buffer in the recorded step. */
  private static final class Use {
    final Layer owner;
    final String key;
    final Tensor tensor;
    final int start;
    int end = -1; // the owner's end of backward; -1: not yet
    boolean excluded; // the model's output

    Use(Layer owner, String key, Tensor tensor, int start) {
      this.owner = owner;
      this.key = key;
      this.tensor = tensor;
      this.start = start;
    }
  }

  /** A gradient in the recorded step. */
  private static final class Lease {
    final DType dtype;
    final long numel;
    final int start;
    int end = -1;

    Lease(DType dtype, long numel, int start) {
      this.dtype = dtype;
      this.numel = numel;
      this.start = start;
    }
  }

  private static final class Recording {
    final String input;
    int clock;
    final Map<BufferKey, Use> uses = new LinkedHashMap<>();
    final Map<Layer, List<Use>> byOwner = new IdentityHashMap<>();
    final List<Lease> leases = new ArrayList<>();
    final List<Object> events = new ArrayList<>();

    Recording(String input) {
      this.input = input;
    }
  }

  /** {@code minBytes}: smaller layer buffers stay the layers' own ({@link #MIN_BYTES}; tests plan everything). */
  StepMemoryPlan(Device device, GradientPool pool, long minBytes) {
    this.device = device;
    this.pool = pool;
    this.minBytes = minBytes;
  }

  /** A forward begins: a training step records, or replays the plan for its input; evaluation does neither. */
  void beginStep(Tensor x, boolean training) {
    rec = null;
    plan = null;
    inBackward = false;
    leases = 0;
    if (!training) {
      return;
    }
    pool.reclaimAll(); // gradients of a step abandoned midway must not count as this step's
    String input = x.dtype().wireName() + Shape.str(x.shape());
    Plan p = plans.get(input);
    if (p != null) {
      plan = p;
      onPlan = true;
      cursor = 0;
    } else if (!unplannable.contains(input)) {
      rec = new Recording(input);
    }
  }

  /** {@link Layer#buffer} handed {@code t} (the layer's buffer {@code key}) to its owner. */
  void used(Layer owner, String key, Tensor t) {
    if (rec == null || inBackward || regionKeys.containsKey(t.storage()) || bytes(t) < minBytes) {
      return;
    }
    BufferKey k = new BufferKey(owner, key);
    if (!rec.uses.containsKey(k)) {
      Use u = new Use(owner, key, t, rec.clock++);
      rec.uses.put(k, u);
      rec.byOwner.computeIfAbsent(owner, o -> new ArrayList<>()).add(u);
    }
  }

  /** The model's forward returned {@code out}: its storage stays out of the plan; backward follows. */
  void endForward(Tensor out) {
    inBackward = true;
    if (rec != null && out != null) {
      for (Use u : rec.uses.values()) {
        u.excluded |= u.tensor.storage() == out.storage();
      }
    }
  }

  /** {@code layer}'s backward returned: its buffers are dead until the next forward. */
  void backwardEnded(Layer layer) {
    if (rec != null) {
      int t = rec.clock++;
      rec.events.add(layer);
      for (Use u : rec.byOwner.getOrDefault(layer, List.of())) {
        if (u.end < 0) {
          u.end = t;
          if (!u.excluded) {
            release(u);
          }
        }
      }
    } else if (plan != null) {
      expect(layer);
    }
  }

  /**
   * {@code t}, a layer buffer, has no reader left in this step: the last one ran in forward and no backward reads
   * it (a residual block's shortcut output once the add has read it: ResNet-50's four downsample batch-norm
   * outputs, 0.72 GiB at batch 256 in bf16, which are live at the end of forward otherwise). A recorded step ends
   * its life here (and frees it, as at the end of a backward); a replayed one expects the same event. Buffers the
   * plan does not hold are ignored, in both.
   */
  void deadAfterForward(Tensor t) {
    if (!forwardDeaths || inBackward) {
      return;
    }
    if (rec != null) {
      for (Use u : rec.byOwner.values().stream().flatMap(List::stream).toList()) {
        if (u.tensor.storage() == t.storage() && u.end < 0) {
          u.end = rec.clock++;
          rec.events.add(new Consumed(new BufferKey(u.owner, u.key)));
          release(u);
          return;
        }
      }
    } else if (plan != null) {
      BufferKey k = regionKeys.get(t.storage());
      if (k != null) {
        expect(new Consumed(k));
      }
    }
  }

  /** The pool's next gradient of this step: its number, for {@link #leaseRegion} and {@link #released}; -1: none. */
  int acquire(DType dtype, long numel) {
    if (rec == null && plan == null) {
      return -1;
    }
    Acquire a = new Acquire(dtype, numel);
    if (rec != null) {
      rec.leases.add(new Lease(dtype, numel, rec.clock++));
      rec.events.add(a);
    } else {
      expect(a);
    }
    return leases++;
  }

  /** The planned region for gradient {@code lease} of a replayed step still on plan, else null (the pool's own). */
  Tensor leaseRegion(int lease) {
    return plan != null && onPlan && lease >= 0 && lease < plan.leaseRegions.length ? plan.leaseRegions[lease] : null;
  }

  /** Gradient {@code lease} of this step went back to the pool. */
  void released(int lease) {
    if (rec != null && lease < rec.leases.size()) {
      rec.leases.get(lease).end = rec.clock++;
      rec.events.add(new Release(lease));
    } else if (plan != null) {
      expect(new Release(lease));
    }
  }

  private void expect(Object event) {
    if (onPlan && (cursor >= plan.events.length || !plan.events[cursor].equals(event))) {
      onPlan = false;
    }
    cursor++;
  }

  /** The step's backward is done (every gradient is back): a recorded step is planned now. */
  void endStep() {
    Recording r = rec;
    Plan p = plan;
    rec = null;
    plan = null;
    if (r != null) {
      build(r);
    } else if (p != null) {
      if (onPlan && cursor == p.events.length) {
        replayedSteps++;
      } else {
        offPlanSteps++;
      }
    }
  }

  /** A step cut short (Model#discardStep): forget its recording or replay. */
  void discardStep() {
    rec = null;
    plan = null;
  }

  /** The layer drops buffer {@code u} and the device frees it (the recorded step no longer needs it). */
  private void release(Use u) {
    u.owner.dropBuffer(u.key, u.tensor);
    device.free(u.tensor);
  }

  private void build(Recording r) {
    List<Use> uses = new ArrayList<>();
    long replaced = 0;
    for (Use u : r.uses.values()) {
      if (!u.excluded) {
        uses.add(u);
        replaced += align(bytes(u.tensor));
        if (u.end < 0) {
          release(u); // its owner's backward never ran: live to the end of the step
        }
      }
    }
    replaced += pool.freeIdle();
    int n = uses.size() + r.leases.size();
    DType[] dtype = new DType[n];
    long[] size = new long[n];
    int[] start = new int[n];
    int[] end = new int[n];
    for (int i = 0; i < n; i++) {
      boolean use = i < uses.size();
      Use u = use ? uses.get(i) : null;
      Lease l = use ? null : r.leases.get(i - uses.size());
      dtype[i] = use ? u.tensor.dtype() : l.dtype;
      size[i] = align(use ? bytes(u.tensor) : l.numel * l.dtype.bytes());
      start[i] = use ? u.start : l.start;
      int e = use ? u.end : l.end;
      end[i] = e < 0 ? r.clock : e;
    }
    long[] offset = new long[n];
    Map<DType, Long> slabBytes = new EnumMap<>(DType.class);
    for (DType d : DType.values()) {
      int[] of = java.util.stream.IntStream.range(0, n).filter(i -> dtype[i] == d).toArray();
      if (of.length == 0) {
        continue;
      }
      long[] s = new long[of.length];
      int[] a = new int[of.length];
      int[] b = new int[of.length];
      for (int k = 0; k < of.length; k++) {
        s[k] = size[of[k]];
        a[k] = start[of[k]];
        b[k] = end[of[k]];
      }
      long[] o = place(s, a, b);
      long top = 0;
      for (int k = 0; k < of.length; k++) {
        offset[of[k]] = o[k];
        top = Math.max(top, o[k] + s[k]);
      }
      slabBytes.put(d, top);
    }
    Map<DType, Tensor> slabs = new EnumMap<>(DType.class);
    try {
      for (Map.Entry<DType, Long> e : slabBytes.entrySet()) {
        DType d = e.getKey();
        slabs.put(d, device.allocate(d, Math.toIntExact(e.getValue() / ALIGN), (int) (ALIGN / d.bytes())));
      }
    } catch (RuntimeException e) {
      unplannable.add(r.input); // the layers allocate their buffers again, as without a plan
      for (Tensor s : slabs.values()) {
        try {
          device.free(s);
        } catch (RuntimeException suppressed) {
          e.addSuppressed(suppressed);
        }
      }
      throw e;
    }
    for (int i = 0; i < uses.size(); i++) {
      Use u = uses.get(i);
      Tensor region = slabs.get(dtype[i]).region(offset[i] / dtype[i].bytes(), u.tensor.shape());
      regionKeys.put(region.storage(), new BufferKey(u.owner, u.key));
      u.owner.installBuffer(u.key, region);
    }
    Tensor[] leaseRegions = new Tensor[r.leases.size()];
    for (int k = 0; k < leaseRegions.length; k++) {
      int i = uses.size() + k;
      leaseRegions[k] = slabs.get(dtype[i]).region(offset[i] / dtype[i].bytes(),
          Math.toIntExact(r.leases.get(k).numel));
    }
    plans.put(r.input, new Plan(r.events.toArray(), leaseRegions));
    built.add(new Model.PlannedMemory(r.input, slabBytes, maxLive(size, start, end, r.clock), replaced, uses.size(),
        leaseRegions.length));
  }

  /**
   * Offsets (multiples of {@link #ALIGN}) for items of {@code size} bytes (multiples of ALIGN) live over [start,
   * end] (inclusive), such that two items whose intervals meet never share memory: the largest first (ties: the
   * earlier), each at the lowest offset clear of every item placed before it that it meets in time.
   */
  static long[] place(long[] size, int[] start, int[] end) {
    int n = size.length;
    Integer[] order = new Integer[n];
    for (int i = 0; i < n; i++) {
      order[i] = i;
    }
    Arrays.sort(order, (x, y) -> size[x] != size[y] ? Long.compare(size[y], size[x])
        : start[x] != start[y] ? Integer.compare(start[x], start[y]) : Integer.compare(x, y));
    long[] offset = new long[n];
    List<Integer> placed = new ArrayList<>();
    for (int i : order) {
      List<long[]> busy = new ArrayList<>(); // [from, to) of the placed items live with i
      for (int j : placed) {
        if (start[i] <= end[j] && start[j] <= end[i]) {
          busy.add(new long[] {offset[j], offset[j] + size[j]});
        }
      }
      busy.sort((x, y) -> Long.compare(x[0], y[0]));
      long o = 0;
      for (long[] b : busy) {
        if (o + size[i] <= b[0]) {
          break;
        }
        o = Math.max(o, b[1]);
      }
      offset[i] = o;
      placed.add(i);
    }
    return offset;
  }

  /** The most bytes live at one time on the clock [0, clock]. */
  static long maxLive(long[] size, int[] start, int[] end, int clock) {
    long[] delta = new long[clock + 2];
    for (int i = 0; i < size.length; i++) {
      delta[start[i]] += size[i];
      delta[end[i] + 1] -= size[i];
    }
    long live = 0;
    long max = 0;
    for (long d : delta) {
      live += d;
      max = Math.max(max, live);
    }
    return max;
  }

  static long align(long bytes) {
    return Math.max(ALIGN, (bytes + ALIGN - 1) / ALIGN * ALIGN);
  }

  private static long bytes(Tensor t) {
    return t.numel() * t.dtype().bytes();
  }

  /** The plans built so far, in order. */
  List<Model.PlannedMemory> built() {
    return List.copyOf(built);
  }

  /** Steps that replayed a plan to its end (tests). */
  long replayedSteps() {
    return replayedSteps;
  }

  /** Steps with a plan that went off it (tests). */
  long offPlanSteps() {
    return offPlanSteps;
  }
}
