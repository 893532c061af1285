package dev.sparktrainer.cuda;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.CommunicatorException;
import dev.sparktrainer.comm.WorkerContext;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import java.time.Duration;
import java.util.Base64;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;

/**
 * {@link Communicator} over NCCL, one rank per GPU, bootstrapped from a {@link WorkerContext}: rank 0 makes
 * the NCCL unique id, {@link WorkerContext#allGather} shares it (base64; BarrierTaskContext.allGather in
 * Spark, the in-process rendezvous in the local launcher), and every rank calls ncclCommInitRank on its GPU.
 *
 * <p>Note [no hangs]: the communicator is created non-blocking (ncclConfig_t.blocking = 0). Every NCCL call
 * and every collective is followed by a watchdog wait that polls, in a loop, the CUDA event recorded after
 * the collective and ncclCommGetAsyncError. If NCCL reports an error, {@link #abort()} is called (from any
 * thread), or the collective outlives the timeout, the communicator is aborted (ncclCommAbort, which also
 * stops the collective's kernels) and a {@link CommunicatorException} names the rank, the operation and the
 * cause. So a peer that dies, stalls or aborts makes this rank fail within the timeout instead of hanging.
 * After a failure every call throws.
 *
 * <p>Note [blocking collectives]: the collectives themselves run on a second communicator, split from the first
 * one (ncclCommSplit, same ranks in the same order) with config.blocking = 1, unless
 * -Dsparktrainer.nccl.blockingCollectives=false. Why: NCCL runs every call of a non-blocking communicator on a
 * thread it starts for that call (group.cc, groupLaunchNonBlocking), which the host then polls for: 0.08-0.23 ms
 * of host time per collective was measured on 2x H100, as much as a 25 MiB all-reduce takes on the GPU, so a
 * step of small buckets or a loop of all-reduces was bound by the host. A blocking communicator's collective
 * only queues kernels, in the caller's thread. Nothing new can hang, because every step that waits for a peer
 * still runs non-blocking under the watchdog: the split runs in the non-blocking parent's group (NCCL takes the
 * parent's mode for it; it is polled like the init, and aborting the parent aborts it), and the connections
 * that NCCL makes at a communicator's first collective of each algorithm (runtime connect) are made at
 * creation by warm-up all-reduces of several sizes (4 B to 8 MiB; on one host with 2 H100s NCCL 2.28 chose Ring for
 * every size, NCCL_DEBUG=INFO with the TUNING subsystem; the sizes between also meet the tuner's switch points to
 * Tree across hosts, which is not measured here). What remains blocking is queueing kernels, and the waits for
 * their completion are the watchdog's polls of CUDA events as before, so a dead or stalled peer still fails
 * the rank within the timeout (ncclCommAbort of both communicators). The one residue: a collective whose size
 * makes NCCL pick an algorithm not connected at creation connects at that call, in the caller's thread; its
 * peers issue the same call (DESIGN.md's same-order rule), and a dead peer's closed sockets fail it rather than
 * hang it. close() waits for the streams under the watchdog before finalizing the blocking communicator, so
 * finalizing does not wait on a dead peer either.
 *
 * <p>Ordering: collectives run on the device's comm stream after the work queued so far on its compute
 * stream (an event joins them), and later compute work waits for the collective. Every rank must issue the
 * same collectives in the same order (DESIGN.md).
 */
public final class NcclCommunicator implements Communicator {
  private static final System.Logger LOG = System.getLogger(NcclCommunicator.class.getName());
  /** Default collective timeout. */
  public static final Duration DEFAULT_TIMEOUT = Duration.ofMinutes(5);
  /** -Dsparktrainer.nccl.blockingCollectives=false keeps the collectives on the non-blocking communicator. */
  public static final String BLOCKING_COLLECTIVES_PROPERTY = "sparktrainer.nccl.blockingCollectives";
  /**
   * -Dsparktrainer.nccl.gatherExchange=false: all-to-alls in registered windows stay one ncclAlltoAll at every world
   * size (Note [copy-engine collectives]: otherwise in-place gathers up to {@link #GATHER_EXCHANGE_MAX_RANKS}).
   */
  public static final String GATHER_EXCHANGE_PROPERTY = "sparktrainer.nccl.gatherExchange";
  /** Element counts (fp32) of the warm-up all-reduces that connect NCCL's algorithms at creation. */
  static final int[] WARM_UP_COUNTS = {1, 1 << 10, 16 << 10, 256 << 10, 2 << 20};

  private final int rank;
  private final int worldSize;
  private final CudaDevice device;
  private final long timeoutNanos;
  private final Object lock = new Object();
  private final CudaEvent computeDone;
  private final CudaEvent commDone;
  // Each joinAsync not yet waited for, oldest first, and recorded events to reuse (Note [async gradient buckets]).
  private final java.util.ArrayDeque<Join> joined = new java.util.ArrayDeque<>();
  private final java.util.ArrayDeque<CudaEvent> spareJoins = new java.util.ArrayDeque<>();

  /** The compute stream at a joinAsync, and how many collectives that join covers. */
  private record Join(CudaEvent done, int collectives) {}
  private final boolean oneHost; // all ranks named the same host at creation
  private long comm; // ncclComm_t of the collectives; 0 once aborted or destroyed
  private long parent; // the non-blocking ncclComm_t that comm was split from (Note [blocking collectives]), or 0
  private long zero; // the zero-CTA ncclComm_t of Note [copy-engine collectives], made at the first registration
  private final java.util.ArrayList<Window> windows = new java.util.ArrayList<>(); // registered on zero
  private boolean copyEngineOn; // the last registerCopyEngineBuffers held on every rank, until the release
  private boolean gatherExchange; // with copyEngineOn: all-to-alls in windows go as gathers (every rank agreed)
  private volatile boolean abortRequested;
  private volatile String failure; // why the communicator is no longer usable
  private int unjoined; // async collectives started since the last joinAsync
  private int asyncOnComm; // of which on the comm stream

  private NcclCommunicator(int rank, int worldSize, CudaDevice device, Duration timeout, boolean oneHost) {
    this.rank = rank;
    this.oneHost = oneHost;
    this.worldSize = worldSize;
    this.device = device;
    this.timeoutNanos = timeout.toNanos();
    this.computeDone = device.newEvent();
    this.commDone = device.newEvent();
  }

  /** {@link #create(WorkerContext, CudaDevice, Duration)} with {@link #DEFAULT_TIMEOUT}. */
  public static NcclCommunicator create(WorkerContext ctx, CudaDevice device) {
    return create(ctx, device, DEFAULT_TIMEOUT);
  }

  /**
   * Creates the communicator of {@code ctx}'s rank on {@code device}. A collective call: every rank of the
   * job must call it. Fails (never hangs) within {@code timeout} when a rank does not join.
   *
   * @throws CommunicatorException when the rendezvous or ncclCommInitRank fails or times out
   */
  public static NcclCommunicator create(WorkerContext ctx, CudaDevice device, Duration timeout) {
    return create(ctx, device, timeout,
        !"false".equalsIgnoreCase(System.getProperty(BLOCKING_COLLECTIVES_PROPERTY)));
  }

  /**
   * As {@link #create(WorkerContext, CudaDevice, Duration)}; {@code blockingCollectives} false keeps the
   * collectives on the non-blocking communicator (Note [blocking collectives]).
   */
  public static NcclCommunicator create(WorkerContext ctx, CudaDevice device, Duration timeout,
      boolean blockingCollectives) {
    if (timeout.isNegative() || timeout.isZero()) {
      throw new IllegalArgumentException("timeout must be > 0, got " + timeout);
    }
    NativeLoader.loadJni();
    int rank = ctx.rank();
    int world = ctx.worldSize();
    String mine = "";
    if (rank == 0) {
      byte[] id = new byte[Native.ncclUniqueIdBytes()];
      Native.check(Native.ncclGetUniqueId(id), "ncclGetUniqueId");
      mine = Base64.getEncoder().encodeToString(id);
    }
    Rendezvous r = parseRendezvous(ctx.allGather(mine + HOST_TAG + hostName()), rank, world);
    byte[] id = Base64.getDecoder().decode(r.idBase64());
    NcclCommunicator c = new NcclCommunicator(rank, world, device, timeout, r.oneHost());
    boolean ok = false;
    try {
      c.init(id);
      if (blockingCollectives) {
        c.splitBlocking();
        c.warmUp();
      }
      ok = true;
      return c;
    } finally {
      if (!ok) {
        c.abort();
        c.closeEvents();
      }
    }
  }

  /** What each rank sends at creation: rank 0's NCCL id (others: empty), then this tag and its host's name. */
  static final String HOST_TAG = "@host=";

  /** Rank 0's NCCL id (Base64) and whether all ranks named the same host. */
  record Rendezvous(String idBase64, boolean oneHost) {}

  /**
   * Reads the creation messages of all ranks ({@code id + HOST_TAG + host}, by rank). A rank whose host name is
   * unknown (empty) makes oneHost false: the trainer then keeps the all-reduce overlapped, the safe choice
   * between hosts (Note [in-order gradient all-reduce] in train.Trainer).
   */
  static Rendezvous parseRendezvous(List<String> all, int rank, int world) {
    if (all.size() != world || all.get(0) == null || !all.get(0).contains(HOST_TAG)
        || all.get(0).startsWith(HOST_TAG)) {
      throw new CommunicatorException("rank " + rank + ": the rendezvous did not deliver rank 0's NCCL id ("
          + all.size() + " messages for a world of " + world + ")");
    }
    String first = null;
    boolean oneHost = true;
    for (String m : all) {
      int at = m == null ? -1 : m.lastIndexOf(HOST_TAG);
      String host = at < 0 ? "" : m.substring(at + HOST_TAG.length());
      if (host.isEmpty()) {
        oneHost = false;
      } else if (first == null) {
        first = host;
      } else if (!first.equals(host)) {
        oneHost = false;
      }
    }
    String id0 = all.get(0);
    return new Rendezvous(id0.substring(0, id0.lastIndexOf(HOST_TAG)), oneHost);
  }

  /**
   * This machine's host name (the kernel's, then $HOSTNAME, then the JDK's, which may ask DNS), or "" when none is
   * found. Containers on one machine name different hosts: the safe side (AUTO then overlaps).
   */
  static String hostName() {
    try {
      String h = java.nio.file.Files.readString(java.nio.file.Path.of("/proc/sys/kernel/hostname")).trim();
      if (!h.isEmpty()) {
        return h;
      }
    } catch (java.io.IOException | SecurityException e) {
      LOG.log(System.Logger.Level.DEBUG, "no kernel host name: {0}", e.toString());
    }
    String env = System.getenv("HOSTNAME");
    if (env != null && !env.isBlank()) {
      return env.trim();
    }
    try {
      String h = java.net.InetAddress.getLocalHost().getHostName();
      return h == null ? "" : h.trim();
    } catch (java.io.IOException | SecurityException e) {
      LOG.log(System.Logger.Level.DEBUG, "no local host name: {0}", e.toString());
      return "";
    }
  }

  /**
   * Splits the blocking communicator of the collectives from the non-blocking one (Note [blocking collectives]);
   * the split is polled on both under the timeout.
   */
  private void splitBlocking() {
    long child = split(-1, "ncclCommSplit (blocking collectives, world " + worldSize + ", " + device.name() + ")");
    synchronized (lock) {
      ensureUsable("ncclCommSplit");
      parent = comm;
      comm = child;
    }
  }

  /**
   * A blocking communicator of the same ranks split from the non-blocking one (parent, or comm before
   * splitBlocking), with config.CTAPolicy = ctaPolicy (-1: NCCL's default); polled under the timeout.
   */
  private long split(int ctaPolicy, String what) {
    long deadline = System.nanoTime() + timeoutNanos;
    device.makeCurrent();
    long[] out = new long[2];
    long from;
    int st;
    synchronized (lock) {
      ensureUsable(what);
      from = parent != 0 ? parent : comm;
      st = Native.ncclCommSplit(from, rank, 1, ctaPolicy, out);
    }
    if (st != 0 && !Native.ncclInProgress(st)) {
      throw fail(what, Native.errorString(st) + lastError()); // aborts the parent
    }
    // NCCL runs the split in the parent's group job, which reports it in progress until it is done; then the
    // child is in the cell, and it reports its own state.
    afterCall(0, what, deadline, from);
    long child = Native.ncclTakeComm(out[1]);
    if (child == 0) {
      throw fail(what, "NCCL reported the split done but made no communicator" + lastError());
    }
    try {
      afterCall(0, what, deadline, child);
    } catch (RuntimeException e) {
      Native.ncclCommAbort(child); // fail() aborted the others
      throw e;
    }
    return child;
  }

  /**
   * All-reduces of {@link #WARM_UP_COUNTS} elements, so that NCCL makes its connections now, under the watchdog
   * (Note [blocking collectives]); the buffer's values are not used.
   */
  private void warmUp() {
    int max = 0;
    for (int n : WARM_UP_COUNTS) {
      max = Math.max(max, n);
    }
    Tensor scratch = device.allocate(DType.FLOAT32, max); // zero-filled
    try {
      for (int n : WARM_UP_COUNTS) {
        allReduceSum(scratch.view(0, n));
      }
    } finally {
      device.free(scratch); // after the all-reduces (Device#free orders it after queued work)
    }
  }

  /** Whether the collectives run on a blocking communicator split from the non-blocking one. */
  public boolean blockingCollectives() {
    synchronized (lock) {
      return parent != 0;
    }
  }

  /** Whether every rank of this communicator runs on this host (their host names at creation were equal). */
  @Override
  public boolean allRanksOnOneHost() {
    return oneHost;
  }

  private void init(byte[] id) {
    device.makeCurrent();
    long[] out = new long[2];
    int st = Native.ncclCommInitRank(out, worldSize, id, rank, device.ordinal());
    synchronized (lock) {
      comm = out[0];
    }
    long deadline = System.nanoTime() + timeoutNanos;
    afterCall(st, "ncclCommInitRank(world " + worldSize + ", " + device.name() + ")", deadline);
    Native.ncclTakeComm(out[1]); // NCCL's job is done: it no longer stores into the cell
    LOG.log(System.Logger.Level.DEBUG, "rank {0}: NCCL communicator of {1} ranks on {2}", rank, worldSize,
        device.name());
  }

  @Override
  public int rank() {
    return rank;
  }

  @Override
  public int worldSize() {
    return worldSize;
  }

  /** The device this rank's collectives run on. */
  public CudaDevice device() {
    return device;
  }

  private CudaTensor tensor(Tensor t, String op) {
    if (!(t instanceof CudaTensor c) || t.device() != device) {
      throw new IllegalArgumentException(op + ": " + t + " is not on " + device.name());
    }
    return c;
  }

  @Override
  public void allReduceSum(Tensor buf) {
    CudaTensor b = tensor(buf, "allReduceSum");
    device.noteWritten(b);
    collective("allReduceSum of " + buf, () -> Native.ncclAllReduce(b.address(), b.address(), b.numel(),
        b.dtype().ordinal(), Native.OP_SUM, comm, device.commStream().handle()));
  }

  /** In place: buf = mean over ranks of buf (ncclAvg). */
  public void allReduceMean(Tensor buf) {
    CudaTensor b = tensor(buf, "allReduceMean");
    device.noteWritten(b);
    collective("allReduceMean of " + buf, () -> Native.ncclAllReduce(b.address(), b.address(), b.numel(),
        b.dtype().ordinal(), Native.OP_AVG, comm, device.commStream().handle()));
  }

  @Override
  public void broadcast(Tensor buf, int root) {
    if (root < 0 || root >= worldSize) {
      throw new IllegalArgumentException("broadcast root " + root + " does not exist in a world of " + worldSize);
    }
    CudaTensor b = tensor(buf, "broadcast");
    device.noteWritten(b);
    collective("broadcast of " + buf + " from rank " + root, () -> Native.ncclBroadcast(b.address(), b.address(),
        b.numel(), b.dtype().ordinal(), root, comm, device.commStream().handle()));
  }

  /** recv (n) = rank's n-element slice of the sum over ranks of send (n * worldSize). */
  public void reduceScatterSum(Tensor send, Tensor recv) {
    CudaTensor s = tensor(send, "reduceScatterSum");
    CudaTensor r = tensor(recv, "reduceScatterSum");
    if (s.numel() != r.numel() * worldSize || s.dtype() != r.dtype()) {
      throw new IllegalArgumentException("reduceScatterSum: send must have worldSize * recv elements of recv's"
          + " dtype, got " + send + " and " + recv);
    }
    device.noteWritten(r);
    collective("reduceScatterSum of " + send, () -> Native.ncclReduceScatter(s.address(), r.address(), r.numel(),
        r.dtype().ordinal(), Native.OP_SUM, comm, device.commStream().handle()));
  }

  /** recv (n * worldSize) = every rank's send (n), in rank order. */
  public void allGather(Tensor send, Tensor recv) {
    CudaTensor s = tensor(send, "allGather");
    CudaTensor r = tensor(recv, "allGather");
    if (r.numel() != s.numel() * worldSize || s.dtype() != r.dtype()) {
      throw new IllegalArgumentException("allGather: recv must have worldSize * send elements of send's dtype,"
          + " got " + send + " and " + recv);
    }
    device.noteWritten(r);
    collective("allGather of " + send, () -> Native.ncclAllGather(s.address(), r.address(), s.numel(),
        s.dtype().ordinal(), comm, device.commStream().handle()));
  }

  /**
   * In place, for each buffer: buf = sum over ranks of buf, issued as one NCCL group (ncclGroupStart/End),
   * e.g. the all-reduces of several gradient buckets; waits for the whole group under the watchdog.
   */
  public void allReduceSumGrouped(List<? extends Tensor> bufs) {
    for (Tensor t : bufs) {
      CudaTensor b = tensor(t, "allReduceSumGrouped");
      if (b.dtype() == DType.INT32) {
        throw new IllegalArgumentException("allReduceSumGrouped: int32 buffers are not gradients: " + t);
      }
      device.noteWritten(b);
    }
    collective("grouped allReduceSum of " + bufs.size() + " buffers", () -> {
      int st = Native.ncclGroupStart();
      if (st != 0) {
        return st;
      }
      int err = 0;
      for (Tensor t : bufs) {
        CudaTensor b = (CudaTensor) t;
        int s = Native.ncclAllReduce(b.address(), b.address(), b.numel(), b.dtype().ordinal(), Native.OP_SUM,
            comm, device.commStream().handle());
        if (s != 0 && !Native.ncclInProgress(s)) {
          err = s;
          break;
        }
      }
      int end = Native.ncclGroupEnd();
      return err != 0 ? err : end;
    });
  }

  // ---- Note [async gradient buckets]: allReduceSumAsync queues the all-reduce on the comm stream after the
  // compute work queued so far (an event joins them) and returns once NCCL has taken the call (non-blocking
  // mode: polled, under the timeout); joinAsync makes later compute work wait for the comm stream; awaitAsync
  // waits on the host for the comm stream under the watchdog, like a blocking collective, so a dead peer
  // still fails the step within the timeout. The trainer calls awaitAsync after queueing the optimizer, so
  // the GPU goes from the last bucket to the optimizer without waiting for the host. allReduceSumInOrder queues
  // the all-reduce on the compute stream instead (no overlap, no cross-stream wait); joinAsync and awaitAsync
  // cover both kinds (an event on the compute stream past each join). awaitAsyncBefore(keep) waits only for the
  // joins before the last `keep` ones (Note [bucket wait lag] in train.Trainer).

  @Override
  public boolean supportsAsync() {
    return true;
  }

  @Override
  public void allReduceSumAsync(Tensor buf) {
    startAsync(Kind.ALL_REDUCE, buf, false);
  }

  @Override
  public void reduceScatterSumAsync(Tensor buf) {
    startAsync(Kind.REDUCE_SCATTER, buf, false);
  }

  @Override
  public void allGatherAsync(Tensor buf) {
    startAsync(Kind.ALL_GATHER, buf, false);
  }

  /** One NCCL group of in-place all-gathers (one launch; Note [sharded optimizer] in train.Trainer). */
  @Override
  public void allGatherAsync(List<? extends Tensor> bufs) {
    startAsync(Kind.ALL_GATHER, bufs, false);
  }

  /**
   * On the compute stream itself, so nothing waits on the comm stream for compute work not yet done (Note
   * [in-order gradient all-reduce] in train.Trainer says why that matters).
   */
  @Override
  public void allReduceSumInOrder(Tensor buf) {
    startAsync(Kind.ALL_REDUCE, buf, true);
  }

  /**
   * Starts the all-to-all of send into recv (Note [copy-engine collectives]), ordered and joined as {@link
   * #allReduceSumAsync}; on the copy engines when both lie in registered windows, then, up to {@link
   * #GATHER_EXCHANGE_MAX_RANKS} ranks, as in-place gathers that leave this rank's chunk of recv as it was.
   */
  @Override
  public void allToAllAsync(Tensor send, Tensor recv) {
    CudaTensor s = tensor(send, "allToAllAsync");
    CudaTensor r = tensor(recv, "allToAllAsync");
    if (s.numel() != r.numel() || s.dtype() != r.dtype() || s.numel() % worldSize != 0) {
      throw new IllegalArgumentException("allToAllAsync: send and recv must have the same dtype and element count, a"
          + " multiple of the " + worldSize + " ranks; got " + send + " and " + recv);
    }
    startAsync(Kind.ALL_TO_ALL, List.of(s, r), false);
  }

  /** The collectives startAsync issues: in place on the whole buffer, on rank slices of it, or send to recv. */
  private enum Kind { ALL_REDUCE, REDUCE_SCATTER, ALL_GATHER, ALL_TO_ALL }

  private void startAsync(Kind kind, Tensor buf, boolean inOrder) {
    startAsync(kind, List.of(buf), inOrder);
  }

  /**
   * One collective per buffer (ALL_TO_ALL: one of the pair send, recv), as one NCCL group (one launch) when there are
   * several. All-gathers and all-to-alls whose buffers lie in registered windows run on the zero-CTA communicator
   * (Note [copy-engine collectives]).
   */
  private void startAsync(Kind kind, List<? extends Tensor> bufs, boolean inOrder) {
    String what = inOrder ? "allReduceSumInOrder" : switch (kind) {
      case ALL_REDUCE -> "allReduceSumAsync";
      case REDUCE_SCATTER -> "reduceScatterSumAsync";
      case ALL_GATHER -> "allGatherAsync";
      case ALL_TO_ALL -> "allToAllAsync";
    };
    if (bufs.isEmpty()) {
      return;
    }
    List<CudaTensor> bs = new java.util.ArrayList<>(bufs.size());
    for (Tensor buf : bufs) {
      CudaTensor b = tensor(buf, what);
      if (kind != Kind.ALL_REDUCE && b.numel() % worldSize != 0) {
        throw new IllegalArgumentException(what + ": " + buf + " does not split into " + worldSize + " equal slices");
      }
      bs.add(b);
    }
    long deadline = System.nanoTime() + timeoutNanos;
    device.makeCurrent();
    for (int k = kind == Kind.ALL_TO_ALL ? 1 : 0; k < bs.size(); k++) {
      device.noteWritten(bs.get(k));
    }
    String target = kind == Kind.ALL_TO_ALL ? bufs.get(0) + " to " + bufs.get(1)
        : bs.size() == 1 ? bufs.get(0).toString() : bs.size() + " buffers";
    synchronized (lock) {
      ensureUsable(what);
      CudaStream s = inOrder ? device.computeStream() : device.commStream();
      if (!inOrder) {
        computeDone.record(device.computeStream());
        s.waitFor(computeDone);
      }
      int calls = kind == Kind.ALL_TO_ALL ? 1 : bs.size();
      boolean group = calls > 1;
      int st = group ? Native.ncclGroupStart() : 0;
      boolean started = st == 0 || Native.ncclInProgress(st); // a group is ended only once it has begun
      for (int k = 0; k < calls && (st == 0 || Native.ncclInProgress(st)); k++) {
        CudaTensor b = bs.get(k);
        long slice = b.numel() / worldSize; // this rank's slice of a reduce-scatter or all-gather
        long mine = b.address() + rank * slice * b.dtype().bytes();
        st = switch (kind) {
          case ALL_REDUCE -> Native.ncclAllReduce(b.address(), b.address(), b.numel(), b.dtype().ordinal(),
              Native.OP_SUM, comm, s.handle());
          // in place, as NCCL defines it: recvbuff = sendbuff + rank * recvcount
          case REDUCE_SCATTER -> Native.ncclReduceScatter(b.address(), mine, slice, b.dtype().ordinal(),
              Native.OP_SUM, comm, s.handle());
          // in place: sendbuff = recvbuff + rank * sendcount
          case ALL_GATHER -> Native.ncclAllGather(mine, b.address(), slice, b.dtype().ordinal(),
              inWindow(b) ? zero : comm, s.handle());
          case ALL_TO_ALL -> {
            CudaTensor r = bs.get(1);
            boolean windows = inWindow(b) && inWindow(r);
            yield windows && gatherExchange ? exchangeByGathers(b, r, slice, s)
                : Native.ncclAlltoAll(b.address(), r.address(), slice, b.dtype().ordinal(), windows ? zero : comm,
                    s.handle());
          }
        };
      }
      if (group && started) {
        int end = Native.ncclGroupEnd();
        st = st != 0 && !Native.ncclInProgress(st) ? st : end;
      }
      if (st != 0 && !Native.ncclInProgress(st)) {
        throw fail(what + " of " + target, "NCCL call failed: " + Native.errorString(st) + lastError());
      }
      unjoined++;
      if (!inOrder) {
        asyncOnComm++;
      }
    }
    afterCall(0, what, deadline);
  }

  // ---- Note [copy-engine collectives]: beside the kernels' communicator, a third one split with
  // config.CTAPolicy = NCCL_CTA_POLICY_ZERO, on which NCCL (2.28+) runs all-gathers, all-to-alls and gathers between
  // GPUs of one NVLink domain on the copy engines, without SMs, when both buffers lie in windows registered as symmetric
  // (ncclCommWindowRegister, NCCL_WIN_COLL_SYMMETRIC: every rank uses the same offsets). Such windows need cuMem
  // memory NCCL can export: CudaDevice#allocateRegistrable (ncclMemAlloc). The sharded optimizer uses them (Note
  // [sharded optimizer] in train.Trainer): its reduce-scatter becomes an all-to-all whose sums the compute stream
  // adds, and its all-gathers move to the copy engines, so the backward GEMMs keep nearly every SM. Measured
  // (benchmarks/gpu/ce/ce_overlap.cu, 2 H100s): 40 GEMMs beside 7 passes of reduce-scatter + all-gather over
  // 250 MiB of bf16 took 31.3-32.5 ms with the kernels and a 24-SM carve-out, 26.1-29.7 ms with the copy engines
  // and a 4-SM carve-out, both finishing the communication at 14.4-15.4 ms; with no carve-out at all the copy
  // engines' collectives wait for the GEMMs (NCCL still launches a small kernel per collective). Registration is
  // a collective of the zero-CTA communicator (blocking, as the collectives' communicator: Note [blocking
  // collectives]).
  // Not every byte avoided the SMs: NCCL's all-to-all also copies each rank's own chunk into its receive buffer, in
  // the same cudaMemcpyBatchAsync as the copies to the peers, and CUDA moves such copies within one GPU with the
  // copy engines only from driver 13.1 on (cudaMemcpyFlagPreferOverlapWithCompute). On the device's driver (580,
  // CUDA 13.0) a trace of the benchmark MLP with fp32 gradients showed these 12.5 MiB copies at ~110 us beside a
  // GEMM (the 4 SMs it leaves) and ~10 us between GEMMs (benchmarks/gpu/cupti/copies.py;
  // results/2026-11-26-h100x2-ce-buckets). The all-to-all has no in-place form, but NCCL's gather has one (the
  // root's send is its own chunk of the receive buffer; no copy), so allToAllAsync in windows goes as one gather per
  // root (exchangeByGathers, up to GATHER_EXCHANGE_MAX_RANKS), and this rank's chunk of recv is left as it was: the
  // update reads this rank's own chunk where backward wrote it (engine.GradientSlices; Note [summed gradient
  // slices] in optim.cuh). The trainer also queues fewer, larger exchanges (Trainer.COPY_ENGINE_BUCKET_BYTES) ahead
  // of the update.

  /**
   * The largest world size at which {@link #allToAllAsync} in registered windows goes as one in-place gather per rank
   * ({@link #exchangeByGathers}) rather than one all-to-all: each collective makes two handshakes between all the GPUs,
   * so the gathers make W times the all-to-all's; measured at 2 ranks only.
   */
  static final int GATHER_EXCHANGE_MAX_RANKS = 2;

  /**
   * Note [copy-engine collectives]: the all-to-all of send into recv without this rank's own chunk, as one gather per
   * root rank on the zero-CTA communicator. The root gathers in place (its send is its own chunk of recv), so NCCL
   * copies nothing within the GPU; the others send the root's chunk of send. Returns NCCL's status (lock held).
   */
  private int exchangeByGathers(CudaTensor send, CudaTensor recv, long slice, CudaStream s) {
    long bytes = slice * send.dtype().bytes();
    int st = 0;
    for (int root = 0; root < worldSize && (st == 0 || Native.ncclInProgress(st)); root++) {
      long from = root == rank ? recv.address() + root * bytes : send.address() + root * bytes;
      st = Native.ncclGather(from, recv.address(), slice, send.dtype().ordinal(), root, zero, s.handle());
    }
    return st;
  }

  private record Window(long handle, long address, long bytes) {}

  /** Whether t lies inside a registered window while this fit's registration held on every rank (lock held). */
  private boolean inWindow(CudaTensor t) {
    return copyEngineOn && covers(t.address(), t.bytes());
  }

  /** Why buffers cannot be registered for copy-engine collectives on this rank, or null. */
  private String copyEngineIneligibility(List<? extends Tensor> bufs) {
    if (!oneHost) {
      return "the ranks are on more than one host (NCCL's copy-engine collectives stay within one NVLink domain)";
    }
    long[] v = new long[4];
    Native.check(Native.versions(v), "versions");
    long nccl = Math.min(v[0], Native.ncclCompiledVersion()); // the runtime's, and the headers' the JNI was built with
    if (nccl < COPY_ENGINE_MIN_NCCL) {
      return "NCCL " + nccl + " (runtime " + v[0] + ", headers " + Native.ncclCompiledVersion() + ") is older than"
          + " 2.28.3, the first with copy-engine collectives";
    }
    if (worldSize == 2 && nccl < COPY_ENGINE_TWO_RANK_FIX && !"0".equals(System.getenv("NCCL_NVLS_ENABLE"))) {
      return "NCCL " + nccl + " can hang the first copy-engine collective of two ranks where NVLink multicast is on"
          + " (NVIDIA/nccl pull request 2290); set NCCL_NVLS_ENABLE=0 or use NCCL 2.31.2+";
    }
    for (Tensor t : bufs) {
      CudaTensor c = tensor(t, "registerCopyEngineBuffers");
      if (!device.isRegistrable(c)) {
        return t + " is not in registrable memory (CudaDevice#allocateRegistrable; build the model after "
            + "CudaDevice#preferRegistrableMemory(true) or with -D" + CudaDevice.REGISTRABLE_MEMORY_PROPERTY + "=true)";
      }
    }
    return null;
  }

  /** NCCL 2.28.3: the first version with copy-engine collectives (NCCL_VERSION_CODE). */
  static final long COPY_ENGINE_MIN_NCCL = 22803;

  /** NCCL 2.31.2: two-rank copy-engine collectives synchronise without multicast (NVIDIA/nccl PR 2290). */
  static final long COPY_ENGINE_TWO_RANK_FIX = 23102;

  /**
   * Registers the whole allocations of {@code bufs} as symmetric windows of the zero-CTA communicator (made at the
   * first call), a collective (Note [copy-engine collectives]). First the ranks agree, by an all-reduce under the
   * watchdog, that every one of them can and has the same number of allocations to register (none where an earlier
   * fit that failed left them registered); the blocking registration comes only then, so a rank that cannot does not
   * leave the others waiting in it. Returns null when every rank's buffers are registered, else why not (then this
   * fit's collectives use NCCL's kernels on every rank).
   */
  @Override
  public String registerCopyEngineBuffers(List<? extends Tensor> bufs) {
    synchronized (lock) {
      copyEngineOn = false;
    }
    if (worldSize < 2) {
      return "one rank";
    }
    String why = copyEngineIneligibility(bufs);
    List<CudaBuffer> todo = new java.util.ArrayList<>();
    if (why == null) {
      synchronized (lock) {
        for (Tensor t : bufs) {
          CudaTensor c = (CudaTensor) t;
          CudaBuffer b = c.buffer();
          if (!todo.contains(b) && !covers(b.address(), b.bytes())) {
            todo.add(b);
          }
        }
      }
    }
    boolean gathers = worldSize <= GATHER_EXCHANGE_MAX_RANKS
        && !"false".equalsIgnoreCase(System.getProperty(GATHER_EXCHANGE_PROPERTY));
    // {ranks that can, allocations to register, ranks that would exchange by gathers}: the collectives' shapes
    // must be the same on every rank, so the gathers only when all of them would
    Tensor vote = device.allocate(DType.FLOAT32, 3);
    float[] agreed = new float[3];
    try {
      device.upload(new float[] {why == null ? 1f : 0f, why == null ? todo.size() : 0f, gathers ? 1f : 0f}, 0, vote);
      allReduceSum(vote);
      device.download(vote, agreed, 0);
    } finally {
      device.free(vote);
    }
    if (why != null) {
      return why;
    }
    if (agreed[0] != worldSize) {
      return "another rank cannot register its buffers (its log says why)";
    }
    if (agreed[1] != (float) todo.size() * worldSize) {
      return "the ranks' registered buffers differ (a fit that failed on some ranks only left them registered)";
    }
    long z;
    synchronized (lock) {
      z = zero;
    }
    if (z == 0 && !todo.isEmpty()) {
      z = split(Native.NCCL_CTA_POLICY_ZERO, "ncclCommSplit (copy-engine collectives, world " + worldSize + ", "
          + device.name() + ")");
      synchronized (lock) {
        if (comm == 0) {
          Native.ncclCommAbort(z);
          ensureUsable("registerCopyEngineBuffers");
        }
        zero = z;
      }
    }
    device.makeCurrent();
    for (CudaBuffer b : todo) {
      // Outside the lock: a blocking collective, which abort() (from another thread) must be able to end.
      long[] out = new long[1];
      int st = Native.ncclCommWindowRegister(z, b.address(), b.bytes(), out);
      if (st != 0) {
        throw fail("ncclCommWindowRegister of " + b, Native.errorString(st) + lastError());
      }
      synchronized (lock) {
        ensureUsable("registerCopyEngineBuffers");
        windows.add(new Window(out[0], b.address(), b.bytes()));
      }
    }
    synchronized (lock) {
      copyEngineOn = true;
      gatherExchange = agreed[2] == worldSize;
    }
    return null;
  }

  /** Whether [address, address + bytes) lies inside a registered window (lock held). */
  private boolean covers(long address, long bytes) {
    for (Window w : windows) {
      if (address >= w.address() && address + bytes <= w.address() + w.bytes()) {
        return true;
      }
    }
    return false;
  }

  /** Deregisters every window (a collective), after the queued work that may use them. */
  @Override
  public void releaseCopyEngineBuffers() {
    long z;
    List<Window> gone;
    synchronized (lock) {
      copyEngineOn = false;
      if (windows.isEmpty()) {
        return;
      }
    }
    awaitAsync();
    long deadline = System.nanoTime() + timeoutNanos;
    synchronized (lock) {
      ensureUsable("releaseCopyEngineBuffers");
      commDone.record(device.commStream());
    }
    waitFor(commDone, "releaseCopyEngineBuffers: the queued collectives", deadline);
    device.makeCurrent();
    synchronized (lock) {
      ensureUsable("releaseCopyEngineBuffers");
      z = zero;
      gone = new java.util.ArrayList<>(windows);
      windows.clear();
    }
    for (int i = gone.size() - 1; i >= 0; i--) {
      int st = Native.ncclCommWindowDeregister(z, gone.get(i).handle()); // outside the lock, as registering
      if (st != 0) {
        throw fail("ncclCommWindowDeregister", Native.errorString(st) + lastError());
      }
    }
  }

  @Override
  public void joinAsync() {
    if (unjoined == 0) {
      return;
    }
    device.makeCurrent();
    synchronized (lock) {
      ensureUsable("joinAsync");
      if (asyncOnComm > 0) {
        commDone.record(device.commStream());
        device.computeStream().waitFor(commDone);
      }
      // The compute stream past this point: after the comm stream's collectives (waited for above) and the
      // in-order ones (queued on it), so waiting for this event covers both.
      CudaEvent e = spareJoins.isEmpty() ? device.newEvent() : spareJoins.poll();
      e.record(device.computeStream());
      joined.add(new Join(e, unjoined));
      unjoined = 0;
      asyncOnComm = 0;
    }
  }

  @Override
  public void awaitAsync() {
    joinAsync();
    awaitAsyncBefore(0);
  }

  @Override
  public void awaitAsyncBefore(int keep) {
    if (keep < 0) {
      throw new IllegalArgumentException("keep must be >= 0, got " + keep);
    }
    long deadline = System.nanoTime() + timeoutNanos;
    while (joined.size() > keep) {
      Join j = joined.peek();
      waitFor(j.done(), "async all-reduce of " + j.collectives() + " gradient bucket(s)", deadline);
      spareJoins.add(joined.poll().done());
    }
  }

  @FunctionalInterface
  private interface NcclCall {
    int call();
  }

  /**
   * Orders the collective after the compute stream's work, issues it on the comm stream, makes later compute
   * work wait for it, and waits for it under the watchdog (Note [no hangs]).
   */
  private void collective(String what, NcclCall call) {
    long deadline = System.nanoTime() + timeoutNanos;
    device.makeCurrent();
    synchronized (lock) {
      ensureUsable(what);
      computeDone.record(device.computeStream());
      device.commStream().waitFor(computeDone);
      int st = call.call();
      if (st != 0 && !Native.ncclInProgress(st)) {
        throw fail(what, "NCCL call failed: " + Native.errorString(st) + lastError());
      }
    }
    afterCall(0, what, deadline); // wait until the enqueue itself finished (non-blocking mode)
    synchronized (lock) {
      ensureUsable(what);
      commDone.record(device.commStream());
      device.computeStream().waitFor(commDone);
    }
    waitFor(commDone, what, deadline);
  }

  /** Handles a status of a non-blocking call: success, in progress (poll until done), or failure. */
  private void afterCall(int st, String what, long deadline) {
    afterCall(st, what, deadline, 0);
  }

  /** {@link #afterCall(int, String, long)} polling {@code target} (0: the collectives' communicator). */
  private void afterCall(int st, String what, long deadline, long target) {
    if (st != 0 && !Native.ncclInProgress(st)) {
      throw fail(what, Native.errorString(st) + lastError());
    }
    int[] async = new int[1];
    long start = System.nanoTime();
    while (true) {
      synchronized (lock) {
        ensureUsable(what);
        int r = Native.ncclCommGetAsyncError(target != 0 ? target : comm, async);
        if (r != 0) {
          throw fail(what, "ncclCommGetAsyncError failed: " + Native.errorString(r));
        }
        if (async[0] == 0) {
          return;
        }
        if (async[0] != Native.NCCL_IN_PROGRESS) {
          throw fail(what, Native.errorString((Native.LIB_NCCL << 24) | async[0]) + lastError());
        }
      }
      checkDeadline(what, deadline);
      pause(start);
    }
  }

  /** Waits for {@code done} while watching NCCL's async error, abort requests and the deadline. */
  private void waitFor(CudaEvent done, String what, long deadline) {
    int[] async = new int[1];
    long start = System.nanoTime();
    while (true) {
      synchronized (lock) {
        ensureUsable(what);
        boolean finished;
        try {
          finished = done.isDone();
        } catch (CudaException e) {
          throw fail(what, "CUDA error while waiting: " + e.getMessage());
        }
        if (finished) {
          return;
        }
        checkAsyncError(comm, what, async);
        if (zero != 0) {
          checkAsyncError(zero, what, async); // Note [copy-engine collectives]
        }
      }
      checkDeadline(what, deadline);
      pause(start);
    }
  }

  /** Fails (aborting) when NCCL reports an error on communicator c (lock held). */
  private void checkAsyncError(long c, String what, int[] async) {
    int r = Native.ncclCommGetAsyncError(c, async);
    if (r != 0) {
      throw fail(what, "ncclCommGetAsyncError failed: " + Native.errorString(r));
    }
    if (async[0] != 0 && async[0] != Native.NCCL_IN_PROGRESS) {
      throw fail(what, "NCCL reported " + Native.errorString((Native.LIB_NCCL << 24) | async[0]) + lastError());
    }
  }

  private void checkDeadline(String what, long deadline) {
    if (System.nanoTime() - deadline > 0) {
      throw fail(what, "timed out after " + TimeUnit.NANOSECONDS.toMillis(timeoutNanos) + " ms (a peer rank"
          + " died, stalled or issued a different collective; the communicator was aborted)");
    }
  }

  /**
   * Note [poll pacing]: a host wait here (NCCL taking a call, a collective or bucket finishing) polls by spinning for
   * its first SPIN_NANOS, then sleeps in growing steps of at most 50 us asked; pauseNanos says which, by the time
   * waited so far (0: spin). Spinning that long because a sleep costs far more than asked: LockSupport.parkNanos
   * sleeps >= ~55 us on Linux whatever it is asked (the timer slack: parkNanos(2 us) = 55.5 us measured), and the
   * common waits are short: NCCL takes each collective of a non-blocking communicator on a thread it starts for
   * the call, which the host then waits for (0.08-0.16 ms measured per call, Note [in-order gradient all-reduce]'s
   * diagnostics). The earlier pacing spun 200 polls (~70 us) and then slept: in a CPU model of the wait
   * (benchmarks/results/2026-11-26-diagnostics/PollPacing.java) a wait ready after 100-150 us ended 29-40 us late,
   * now 0.5 us. Its effect on the GPU benchmarks is not measured yet. One rank thread per GPU, so the spin costs
   * its own core only.
   */
  static final long SPIN_NANOS = 200_000L;

  static long pauseNanos(long waitedNanos) {
    if (waitedNanos < SPIN_NANOS) {
      return 0;
    }
    return Math.min(50_000L, 2_000L + (waitedNanos - SPIN_NANOS) / 20);
  }

  private static void pause(long startNanos) {
    long park = pauseNanos(System.nanoTime() - startNanos);
    if (park == 0) {
      Thread.onSpinWait();
    } else {
      LockSupport.parkNanos(park);
    }
  }

  private void ensureUsable(String what) {
    if (abortRequested && (comm != 0 || parent != 0)) {
      abortLocked("abort() was called");
    }
    if (comm == 0) {
      throw new CommunicatorException("rank " + rank + ": " + what + ": the NCCL communicator is no longer usable ("
          + (failure != null ? failure : "closed") + ")");
    }
  }

  private String lastError() {
    String s = comm != 0 ? Native.ncclGetLastError(comm) : "";
    return s == null || s.isEmpty() ? "" : " [" + s + "]";
  }

  /** Aborts (lock held or not) and returns the exception to throw. */
  private CommunicatorException fail(String what, String cause) {
    String msg = "rank " + rank + " of " + worldSize + " (" + device.name() + "): " + what + ": " + cause;
    synchronized (lock) {
      if (failure == null) {
        failure = msg;
      }
      abortLocked(msg);
    }
    return new CommunicatorException(msg);
  }

  private void abortLocked(String why) {
    if (failure == null) {
      failure = why;
    }
    // the collectives' first: aborting the parent first could free what they use
    long[] both = {zero, comm, parent};
    zero = 0;
    comm = 0;
    parent = 0;
    windows.clear(); // aborting frees them
    copyEngineOn = false;
    for (long c : both) {
      if (c != 0) {
        device.makeCurrent();
        int st = Native.ncclCommAbort(c);
        if (st != 0 && !Native.ncclInProgress(st)) {
          LOG.log(System.Logger.Level.WARNING, "rank {0}: ncclCommAbort: {1}", rank, Native.errorString(st));
        }
      }
    }
  }

  /**
   * Aborts the communicator now: a collective in flight on another thread fails at its next poll (within
   * about a millisecond) with a {@link CommunicatorException}, and every later call throws. Idempotent.
   */
  @Override
  public void abort() {
    abortRequested = true;
    synchronized (lock) {
      abortLocked("abort() was called");
    }
  }

  /**
   * Orderly shutdown: ncclCommFinalize (waiting, under the timeout, for outstanding work), then
   * ncclCommDestroy; falls back to abort on any error. Idempotent.
   */
  @Override
  public void close() {
    try {
      long c;
      long p;
      synchronized (lock) {
        c = comm;
        p = parent;
      }
      if (c == 0) {
        return;
      }
      device.makeCurrent();
      long deadline = System.nanoTime() + timeoutNanos;
      try {
        long z;
        synchronized (lock) {
          z = zero;
        }
        if (z != 0 || p != 0) {
          // Note [blocking collectives]: a blocking communicator's finalize waits in this thread, so first the work
          // queued on both streams finishes under the watchdog; then nothing is left for it to wait for.
          synchronized (lock) {
            ensureUsable("close");
            commDone.record(device.commStream());
            computeDone.record(device.computeStream());
          }
          waitFor(commDone, "close: the queued collectives", deadline);
          waitFor(computeDone, "close: the queued collectives", deadline);
        }
        if (z != 0) { // Note [copy-engine collectives]: the windows left registered go with the communicator
          synchronized (lock) {
            ensureUsable("close");
            Native.check(Native.ncclCommFinalize(z), "ncclCommFinalize (copy-engine collectives)");
            Native.check(Native.ncclCommDestroy(z), "ncclCommDestroy (copy-engine collectives)");
            zero = 0; // only now: a failure above aborts it (the catch below)
            windows.clear();
            copyEngineOn = false;
          }
        }
        if (p != 0) {
          synchronized (lock) {
            ensureUsable("close");
            Native.check(Native.ncclCommFinalize(c), "ncclCommFinalize (blocking collectives)");
            comm = p;
            parent = 0;
            Native.check(Native.ncclCommDestroy(c), "ncclCommDestroy (blocking collectives)");
          }
          c = p;
        }
        int st = Native.ncclCommFinalize(c);
        afterCall(st, "ncclCommFinalize", deadline);
        synchronized (lock) {
          if (comm != 0) {
            comm = 0;
            failure = "closed";
            Native.check(Native.ncclCommDestroy(c), "ncclCommDestroy");
          }
        }
      } catch (RuntimeException e) {
        abort();
        throw e instanceof CommunicatorException ce ? ce
            : new CommunicatorException("rank " + rank + ": closing the NCCL communicator failed: " + e.getMessage(), e);
      }
    } finally {
      closeEvents();
    }
  }

  private void closeEvents() {
    try {
      computeDone.close();
    } finally {
      try {
        commDone.close();
      } finally {
        while (!joined.isEmpty()) {
          joined.poll().done().close();
        }
        while (!spareJoins.isEmpty()) {
          spareJoins.poll().close();
        }
      }
    }
  }
}
