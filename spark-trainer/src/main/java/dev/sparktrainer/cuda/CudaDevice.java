package dev.sparktrainer.cuda;

import static jcuda.driver.JCudaDriver.cuDeviceGet;
import static jcuda.driver.JCudaDriver.cuDeviceGetAttribute;
import static jcuda.driver.JCudaDriver.cuDevicePrimaryCtxRelease;
import static jcuda.driver.JCudaDriver.cuDevicePrimaryCtxRetain;
import static jcuda.driver.JCudaDriver.cuCtxSynchronize;
import static jcuda.driver.JCudaDriver.cuMemAlloc;
import static jcuda.driver.JCudaDriver.cuMemFree;
import static jcuda.driver.JCudaDriver.cuMemGetInfo;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoDAsync;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoHAsync;
import static jcuda.driver.JCudaDriver.cuMemcpyHtoDAsync;
import static jcuda.driver.JCudaDriver.cuMemsetD8Async;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.Bf16;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.GradientSlices;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdevice_attribute;

/**
 * The engine's op set on one NVIDIA GPU.
 *
 * <p>What it holds: the device's primary context (JCuda driver API), three non-blocking streams
 * ({@link #computeStream()} for every op, {@link #copyStream()} for prefetching host data, {@link
 * #commStream()} for collectives), the kernel module loaded from the fatbin, a cuBLASLt handle and
 * workspace (through the JNI library), two pinned staging buffers for host transfers, and a root
 * {@link CudaArena} that owns every tensor's memory. {@link #close()} releases all of it; it is idempotent,
 * and any op after it throws {@link IllegalStateException}.
 *
 * <p>Semantics follow {@link Device} and the CPU engine, op by op (see Note [parity with the CPU engine] in
 * native/kernels/common.cuh): elementwise ops, optimizers and bias gradients give the CPU's bits;
 * reductions accumulate in double; matmul runs on cuBLASLt in fp32 (TF32 off unless {@link Options#tf32()})
 * or with bf16 inputs and fp32 accumulation. Float tensors may be FLOAT32 or BFLOAT16 in every op (bf16 is
 * stored as real 16-bit values, rounded to nearest even on every store); labels are INT32.
 *
 * <p>Threads: a device is used by one thread at a time; each op makes the context current on the calling
 * thread, so a device may move between threads (one worker thread per rank in the local launcher).
 */
public final class CudaDevice implements Device {
  private static final System.Logger LOG = System.getLogger(CudaDevice.class.getName());
  private static final int BLOCK = 256;
  private static final int ROW_WARPS = 8; // must match ROW_WARPS in native/kernels/loss.cuh
  private static final int MAX_PARTIALS = 1024;
  private static final long STAGING_BYTES = 8L << 20;
  private static final int COLSUM_ROWS = 128; // must match COLSUM_ROWS in native/kernels/linear.cuh
  private static final int PREFETCH_SLOTS = 4;

  /** Which GEMM implementation {@link #matmul} uses. */
  public enum MatmulBackend {
    /** cuBLASLt when the JNI library loads, else the reference kernel (with a warning). */
    AUTO,
    /** cuBLASLt; fails when the JNI library cannot load. */
    CUBLASLT,
    /** The plain reference kernel (slow; for checks and machines without the JNI library). */
    REFERENCE
  }

  /**
   * Device options. {@code tf32}: let fp32 matmuls use TF32 tensor cores (faster, ~1e-3 relative error;
   * default false so results match the CPU engine to 1e-5).
   */
  public record Options(MatmulBackend matmul, boolean tf32) {
    /** cuBLASLt if available, fp32 without TF32. */
    public static Options defaults() {
      return new Options(MatmulBackend.AUTO, false);
    }

    /** These options with another matmul backend. */
    public Options withMatmul(MatmulBackend m) {
      return new Options(m, tf32);
    }

    /** These options with TF32 on or off. */
    public Options withTf32(boolean on) {
      return new Options(matmul, on);
    }
  }

  private final int ordinal;
  private final String name;
  private final Options options;
  private final CUdevice cuDevice = new CUdevice();
  private final CUcontext context = new CUcontext();
  private final int smCount;
  private final CudaArena arena;
  private final List<AutoCloseable> owned = new ArrayList<>(); // closed in reverse order
  private final Set<CudaEvent> events = new LinkedHashSet<>();
  private CudaStream compute;
  private CudaStream copy;
  private CudaStream comm;
  private Kernels kernels;
  private BlasLt blasLt;
  private boolean blasLtTried;
  private CudnnHandle cudnn;
  private PinnedBuffer[] staging;
  private CudaEvent[] stagingFree;
  private CudaBuffer scratch; // MAX_PARTIALS doubles + result double + int flag
  private PinnedBuffer hostScratch;
  private volatile boolean closed;
  // Note [bf16 mirror of the parameters] (native/kernels/optim.cuh): the model's flat bf16 copy of its flat
  // fp32 parameters. The fused optimizer steps write both; every other op that writes memory overlapping the
  // parameters (uploads, copies, collectives through noteWritten) marks the mirror stale, and refreshMirror
  // copies only when it is stale.
  private CudaTensor mirrorSrc;
  private CudaTensor mirrorDst;
  private boolean mirrorFresh;
  private final java.util.Set<String> epilogueUnsupported = new java.util.HashSet<>();
  private CudaBuffer colsumPartials;
  // prefetch(): a ring of pinned buffers of its own (so it never waits for the synchronous transfers), the
  // event the copy stream waits for (compute work queued so far), and the event compute waits for.
  private final PinnedBuffer[] prefetchStaging = new PinnedBuffer[PREFETCH_SLOTS];
  private final CudaEvent[] prefetchFree = new CudaEvent[PREFETCH_SLOTS];
  private int prefetchNext;
  private CudaEvent prefetchOrder;
  private CudaEvent prefetchDone;
  private boolean prefetchOrderMarked; // prefetchOrder was recorded by markPrefetchOrder (until awaitPrefetch)
  private boolean prefetchPending;

  /** Opens device {@code ordinal} with {@link Options#defaults()}. */
  public CudaDevice(int ordinal) {
    this(ordinal, Options.defaults());
  }

  /**
   * Opens device {@code ordinal}: retains its primary context, creates the streams, loads the kernels.
   *
   * @throws CudaException when CUDA is unavailable, the ordinal does not exist or the kernels cannot load
   */
  public CudaDevice(int ordinal, Options options) {
    Cuda.requireAvailable();
    int count = Cuda.deviceCount();
    if (ordinal < 0 || ordinal >= count) {
      throw new IllegalArgumentException("CUDA device " + ordinal + " does not exist: " + count
          + " device(s) visible (ordinals 0.." + (count - 1) + "; check CUDA_VISIBLE_DEVICES)");
    }
    this.ordinal = ordinal;
    this.name = "cuda:" + ordinal;
    this.options = options;
    Cuda.check(cuDeviceGet(cuDevice, ordinal), "cuDeviceGet(" + ordinal + ")");
    Cuda.check(cuDevicePrimaryCtxRetain(context, cuDevice), "cuDevicePrimaryCtxRetain(" + ordinal + ")");
    int[] sm = new int[1];
    this.arena = new CudaArena(name, new Allocator(), false);
    boolean ok = false;
    try {
      makeCurrent();
      Cuda.check(cuDeviceGetAttribute(sm, CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, cuDevice),
          "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)");
      compute = own(new CudaStream(this, "compute"));
      copy = own(new CudaStream(this, "copy"));
      comm = own(new CudaStream(this, "comm", true));
      kernels = own(new Kernels(NativeLoader.kernelImage(Cuda.driverVersion() / 1000)));
      staging = new PinnedBuffer[] {own(new PinnedBuffer(this, STAGING_BYTES)),
          own(new PinnedBuffer(this, STAGING_BYTES))};
      stagingFree = new CudaEvent[] {newEvent(), newEvent()};
      hostScratch = own(new PinnedBuffer(this, 64));
      scratch = arena.allocate((MAX_PARTIALS + 2) * 8L, "reduction scratch");
      if (options.matmul() == MatmulBackend.CUBLASLT) {
        blasLt();
      }
      ok = true;
    } finally {
      if (!ok) {
        close();
      }
    }
    this.smCount = sm[0];
  }

  private <T extends AutoCloseable> T own(T r) {
    owned.add(r);
    return r;
  }

  /** The CUDA device ordinal. */
  public int ordinal() {
    return ordinal;
  }

  /** The options this device was opened with. */
  public Options options() {
    return options;
  }

  @Override
  public String name() {
    return name;
  }

  /** The stream every op of this device is queued on. */
  public CudaStream computeStream() {
    ensureOpen();
    return compute;
  }

  /** A second stream for host-to-device prefetch (see {@link #uploadAsync}). */
  public CudaStream copyStream() {
    ensureOpen();
    return copy;
  }

  /** The stream collectives run on ({@link NcclCommunicator}). */
  public CudaStream commStream() {
    ensureOpen();
    return comm;
  }

  /** The root arena owning this device's tensors (make strict scratch arenas with newChild). */
  public CudaArena arena() {
    ensureOpen();
    return arena;
  }

  /** A new event of this device (closed by the caller, or by the device when it closes). */
  public CudaEvent newEvent() {
    return newEvent(false);
  }

  /** A new event, with timing when {@code timing} (CudaTimeline); closed by the caller or with the device. */
  CudaEvent newEvent(boolean timing) {
    ensureOpen();
    CudaEvent e = new CudaEvent(this, timing);
    synchronized (events) {
      events.add(e);
    }
    return e;
  }

  /** Timed events on the compute stream (Note [step timeline] in engine.StepTimeline). */
  @Override
  public dev.sparktrainer.engine.StepTimeline newTimeline() {
    ensureOpen();
    return new CudaTimeline(this);
  }

  void forgetEvent(CudaEvent e) {
    synchronized (events) {
      events.remove(e);
    }
  }

  /** The device's cuDNN handle (created on first use, bound to the compute stream). */
  public synchronized CudnnHandle cudnn() {
    ensureOpen();
    if (cudnn == null) {
      cudnn = own(new CudnnHandle(this, compute));
    }
    return cudnn;
  }

  /** Which matmul implementation this device ended up with ("cuBLASLt" or "reference"). */
  public String matmulBackend() {
    return blasLt() != null ? "cuBLASLt" : "reference";
  }

  /** Free and total device memory in bytes (cuMemGetInfo). */
  public long[] memoryInfo() {
    makeCurrent();
    long[] free = new long[1];
    long[] total = new long[1];
    Cuda.check(cuMemGetInfo(free, total), "cuMemGetInfo");
    return new long[] {free[0], total[0]};
  }

  private synchronized BlasLt blasLt() {
    if (options.matmul() == MatmulBackend.REFERENCE) {
      return null;
    }
    if (!blasLtTried) {
      blasLtTried = true;
      try {
        blasLt = own(new BlasLt(this, arena));
      } catch (CudaException e) {
        if (options.matmul() == MatmulBackend.CUBLASLT) {
          throw e;
        }
        LOG.log(System.Logger.Level.WARNING, "{0}: cuBLASLt unavailable, matmul uses the slow reference kernel: {1}",
            name, e.getMessage());
      }
    }
    return blasLt;
  }

  /**
   * Bytes of the cuBLASLt workspace now (0 while none is allocated, or without cuBLASLt); Note [cuBLASLt workspace]
   * in BlasLt.
   */
  public long blasLtWorkspaceBytes() {
    BlasLt lt = blasLt;
    return lt == null ? 0 : lt.workspaceBytes();
  }

  /** The most workspace, in bytes, that the matmul algorithms this device ran through cuBLASLt have needed. */
  long blasLtWorkspaceNeed() {
    BlasLt lt = blasLt;
    return lt == null ? 0 : lt.workspaceNeed();
  }

  // Note [GEMM SM carve-out]: cuBLASLt's large GEMMs on an H100 are persistent kernels sized for every SM, so a
  // kernel on another stream finds no SM free until the GEMM ends, whatever that stream's priority. The benchmark MLP at W=2 showed it: its 832 MiB of gradient buckets are
  // launched on the comm stream while backward's 8192x8192x4096 GEMMs run, yet NCCL's kernels ran only between
  // them and 2.7 ms of all-reduce was left after backward (benchmarks/README.md). gemmSmCarveout(n) asks cuBLASLt
  // (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, part of the cached plan's key, Note [matmul plan cache]) to choose and
  // launch later matmuls for smCount - n SMs, which leaves n SMs to NCCL's CTAs (NCCL_MAX_CTAS caps how many those
  // are); PyTorch's experimental SM carve-out sets the same attribute. The trainer sets it around a backward whose
  // buckets overlap it (Trainer#gemmSmCarveout) and clears it after. Convolutions (cuDNN) are not affected.
  // Measured, the MLP at W=2 on 2 H100s (ours only; samples/s): none 649k-653k, 16 SMs 660k, 24 SMs (NCCL_MAX_CTAS=24)
  // 688k, 32 SMs 688k, 33 (the default) 694k, 44 679k. With 33 the all-reduce wait after backward fell from 2.7 to
  // 0.5-0.9 ms and backward grew from 5.3 to 7.0 ms: cuBLASLt picked other kernels for 99 SMs (CUPTI: the dW GEMM
  // 765 -> 1016 us, about 132/99 slower), and NCCL's kernels ran 4.8 ms of each 11.8 ms step beside them. With bf16
  // gradients (Note [bf16 gradients] in nn.Model) the all-reduce moves half the bytes and the trainer's automatic
  // choice is three quarters of this device's (24 SMs): 769-775k samples/s against 746-748k with 33 (two samples each).

  /**
   * Leaves {@code sms} SMs to other streams in later cuBLASLt matmuls (Note [GEMM SM carve-out]); 0 clears it.
   *
   * @throws IllegalArgumentException unless 0 <= sms < the device's SM count
   */
  @Override
  public void gemmSmCarveout(int sms) {
    if (sms < 0 || sms >= smCount) {
      throw new IllegalArgumentException("gemmSmCarveout must be in [0, " + smCount + ") SMs on " + name + ", got "
          + sms);
    }
    BlasLt lt = blasLt();
    if (lt != null) {
      lt.smCountTarget(sms == 0 ? 0 : smCount - sms);
    }
  }

  /**
   * A quarter of the SMs (33 on an H100): the benchmark MLP at W = 2 (832 MiB of gradients over NVLink) ran 6.2%
   * faster with it than with none, 1.6% with 16, 4.0% with 44 (Note [GEMM SM carve-out]).
   */
  @Override
  public int autoGemmSmCarveout() {
    return smCount / 4;
  }

  /** The device's number of streaming multiprocessors. */
  public int smCount() {
    return smCount;
  }

  /** Makes the cuBLASLt workspace at least {@code need} bytes (BlasLt#growWorkspace); tests use it. */
  void growBlasLtWorkspace(long need) {
    BlasLt lt = blasLt();
    if (lt == null) {
      throw new IllegalStateException(name + " has no cuBLASLt");
    }
    lt.growWorkspace(need);
  }

  void makeCurrent() {
    Cuda.makeCurrent(context);
  }

  private void ensureOpen() {
    if (closed) {
      throw new IllegalStateException("CudaDevice " + name + " is closed");
    }
  }

  /** Open + current: every op starts here. */
  private void enter() {
    ensureOpen();
    makeCurrent();
    if (opProfile != null) {
      profileMark();
    }
  }

  // ---- Note [op profile]: a diagnostic, off by default. While on, every op first waits for the work before
  // it, and the wall time since the previous op began is charged to that previous op (its name: the outermost
  // CudaDevice method on the stack, i.e. the op the caller asked for). Ops then do not overlap, so the totals
  // show where a step's time goes, not how fast a real step is. No timing assert uses it; benchmarks print it.
  private java.util.Map<String, long[]> opProfile; // op -> {nanos, calls}; null: off
  private String profiledOp;
  private long profiledSince;

  /** Starts (clearing earlier figures) or stops the op profile (Note [op profile]). */
  public synchronized void setOpProfiling(boolean on) {
    if (on) {
      checkNotCapturing("turning the op profile on (it waits for the device after every op)");
      opProfile = new java.util.LinkedHashMap<>();
      profiledOp = null;
    } else if (opProfile != null) {
      profileMark(); // charge the last op
      profiledOp = null;
      frozenProfile = opProfile;
      opProfile = null;
    }
  }

  private java.util.Map<String, long[]> frozenProfile = java.util.Map.of();

  /** Milliseconds and calls per op of the last profile (running or stopped), largest first. */
  public synchronized java.util.Map<String, double[]> opProfile() {
    java.util.Map<String, long[]> src = opProfile != null ? opProfile : frozenProfile;
    java.util.Map<String, double[]> out = new java.util.LinkedHashMap<>();
    src.entrySet().stream().sorted((a, b) -> Long.compare(b.getValue()[0], a.getValue()[0]))
        .forEach(e -> out.put(e.getKey(), new double[] {e.getValue()[0] / 1e6, e.getValue()[1]}));
    return out;
  }

  private void profileMark() {
    compute.synchronize();
    long now = System.nanoTime();
    if (profiledOp != null) {
      long[] v = opProfile.computeIfAbsent(profiledOp, k -> new long[2]);
      v[0] += now - profiledSince;
      v[1]++;
    }
    String op = StackWalker.getInstance().walk(frames -> {
      String last = null;
      for (StackWalker.StackFrame f : (Iterable<StackWalker.StackFrame>) frames::iterator) {
        if (!f.getClassName().equals(CudaDevice.class.getName())) {
          break;
        }
        last = f.getMethodName();
      }
      return last;
    });
    profiledOp = "setOpProfiling".equals(op) ? null : op;
    profiledSince = now;
  }

  private CudaTensor t(Tensor x) {
    if (!(x instanceof CudaTensor) || x.device() != this) {
      throw new IllegalArgumentException(x + " does not belong to " + name);
    }
    return (CudaTensor) x;
  }

  /** A FLOAT32 or BFLOAT16 tensor of this device. */
  private CudaTensor fl(Tensor x) {
    CudaTensor c = t(x);
    if (c.dtype() == DType.INT32) {
      throw new IllegalArgumentException("expected a float tensor, got " + x);
    }
    return c;
  }

  private CudaTensor in(Tensor x) {
    CudaTensor c = t(x);
    if (c.dtype() != DType.INT32) {
      throw new IllegalArgumentException("expected an int32 tensor, got " + x);
    }
    return c;
  }

  private static CudaTensor f32(CudaTensor c, String op) {
    if (c.dtype() != DType.FLOAT32) {
      throw new IllegalArgumentException(op + " needs a FLOAT32 tensor (fp32 master copy), got " + c);
    }
    return c;
  }

  private static int code(Tensor x) {
    return x.dtype().ordinal();
  }

  private static void sameSize(Tensor a, Tensor b, String op) {
    if (a.numel() != b.numel()) {
      throw new IllegalArgumentException(op + ": sizes differ: " + a + " vs " + b);
    }
  }

  private int grid(long n) {
    long g = (n + BLOCK - 1) / BLOCK;
    return (int) Math.max(1, Math.min(g, (long) smCount * 32));
  }

  private int rowGrid(long rows) {
    long g = (rows + ROW_WARPS - 1) / ROW_WARPS;
    return (int) Math.max(1, Math.min(g, (long) smCount * 32));
  }

  // ---------------------------------------------------------------- memory

  @Override
  public CudaTensor allocate(DType dtype, int... shape) {
    enter();
    checkNotCapturing("allocate(" + dtype + Shape.str(shape) + ")");
    long numel = Shape.numel(shape);
    CudaBuffer b = arena.allocate(numel * dtype.bytes(), dtype.wireName() + Shape.str(shape));
    Cuda.check(cuMemsetD8Async(Cuda.ptr(b.address()), (byte) 0, b.bytes(), compute.cu()), "cuMemsetD8Async");
    return new CudaTensor(this, b, dtype, shape);
  }

  /**
   * {@link Device#free}: refused while a CUDA graph is captured; otherwise waits for the compute stream (queued
   * kernels may still read or write the memory; cuMemFree also waits for the device) and gives the buffer back
   * to the driver, so the arena's count drops at once. A graph captured before may point at the memory: it is no
   * longer replayed (CudaGraph.freesAtCapture). Using the tensor or a view of it afterwards throws (CudaBuffer).
   */
  @Override
  public void free(Tensor x) {
    enter();
    CudaTensor c = t(x);
    if (!c.isRoot()) {
      throw new IllegalArgumentException("free: " + x + " is a view or a region of an allocation; only a tensor that"
          + " allocate returned can be freed");
    }
    if (!c.buffer().isOpen()) {
      return;
    }
    checkNotCapturing("free(" + x + ")");
    compute.synchronize();
    c.buffer().close();
  }

  // ---- Note [copy-engine collectives] (NcclCommunicator): registrable memory comes from ncclMemAlloc (cuMem that
  // NCCL can map into its symmetric windows), in an arena of its own. Opt-in, per device, before the model is built
  // (its flat parameter, gradient and mirror buffers are allocated with allocateRegistrable): NCCL rounds such
  // allocations up to its granularity, which would waste memory on a small model that gains nothing from it.

  /** -Dsparktrainer.cuda.registrableMemory=true: the default of {@link #preferRegistrableMemory(boolean)} (false). */
  public static final String REGISTRABLE_MEMORY_PROPERTY = "sparktrainer.cuda.registrableMemory";

  private volatile boolean registrable = Boolean.getBoolean(REGISTRABLE_MEMORY_PROPERTY);
  private CudaArena registrableArena; // made at the first registrable allocation

  /**
   * Whether {@link #allocateRegistrable} gives memory that NCCL can register for copy-engine collectives (ncclMemAlloc)
   * from now on. Set it before building the model whose sharded optimizer should use them. Default:
   * -Dsparktrainer.cuda.registrableMemory (false).
   */
  public void preferRegistrableMemory(boolean on) {
    this.registrable = on;
  }

  @Override
  public CudaTensor allocateRegistrable(DType dtype, int... shape) {
    if (!registrable) {
      return allocate(dtype, shape);
    }
    enter();
    checkNotCapturing("allocateRegistrable(" + dtype + Shape.str(shape) + ")");
    long numel = Shape.numel(shape);
    CudaArena a;
    synchronized (this) {
      if (registrableArena == null) {
        NativeLoader.loadJni();
        registrableArena = new CudaArena(name + " (registrable)", new NcclAllocator(), false);
      }
      a = registrableArena;
    }
    CudaBuffer b = a.allocate(numel * dtype.bytes(), dtype.wireName() + Shape.str(shape) + " (registrable)");
    Cuda.check(cuMemsetD8Async(Cuda.ptr(b.address()), (byte) 0, b.bytes(), compute.cu()), "cuMemsetD8Async");
    return new CudaTensor(this, b, dtype, shape);
  }

  /**
   * The most bytes this device's tensors held: the root arena's peak plus the registrable arena's (an upper bound:
   * the two peaks may come at different times; the registrable buffers live as long as the model).
   */
  public long peakAllocatedBytes() {
    CudaArena a = registrableArena();
    return arena.peakBytes() + (a == null ? 0 : a.peakBytes());
  }

  /** Bytes held by this device's tensors now, the registrable ones included. */
  public long allocatedBytes() {
    CudaArena a = registrableArena();
    return arena.bytesInUse() + (a == null ? 0 : a.bytesInUse());
  }

  /** Whether t lies in memory from {@link #allocateRegistrable} made while registrable memory was preferred. */
  public boolean isRegistrable(CudaTensor t) {
    CudaArena a = registrableArena();
    return a != null && t.buffer().arena() == a;
  }

  /** The registrable arena, or null before the first registrable allocation. */
  private synchronized CudaArena registrableArena() {
    return registrableArena;
  }

  /** ncclMemAlloc/ncclMemFree in this device's context. */
  private final class NcclAllocator implements DeviceAllocator {
    @Override
    public long allocate(long bytes) {
      makeCurrent();
      checkNotCapturing("ncclMemAlloc(" + bytes + " bytes)");
      long[] out = new long[1];
      Native.check(Native.ncclMemAlloc(bytes, out), "ncclMemAlloc(" + bytes + " bytes) on " + name);
      return out[0];
    }

    @Override
    public void free(long address) {
      makeCurrent();
      checkNotCapturing("ncclMemFree");
      memoryFrees++; // as Allocator#free
      // Unmapping does not wait for the device as cuMemFree does: every stream first.
      Cuda.check(cuCtxSynchronize(), "cuCtxSynchronize before ncclMemFree on " + name);
      Native.check(Native.ncclMemFree(address), "ncclMemFree on " + name);
    }
  }

  /** cuMemAlloc/cuMemFree in this device's context. */
  private final class Allocator implements DeviceAllocator {
    @Override
    public long allocate(long bytes) {
      makeCurrent();
      checkNotCapturing("cuMemAlloc(" + bytes + " bytes)");
      Cuda.AllocatedPtr p = new Cuda.AllocatedPtr();
      Cuda.check(cuMemAlloc(p, bytes), "cuMemAlloc(" + bytes + " bytes) on " + name);
      return p.address();
    }

    @Override
    public void free(long address) {
      makeCurrent();
      checkNotCapturing("cuMemFree");
      memoryFrees++; // a CUDA graph captured before this may point at the memory (CudaGraph.freesAtCapture)
      // cuMemFree synchronises with the device, so no queued kernel still uses the memory.
      Cuda.check(cuMemFree(Cuda.ptr(address)), "cuMemFree on " + name);
    }
  }

  // ---------------------------------------------------------------- host transfers

  /**
   * Copies {@code bytes} bytes from the host into device memory at {@code dstAddress} through the pinned
   * staging buffers; {@code fill} writes one chunk (given its byte offset and length) into the staging
   * buffer. Two buffers alternate, so filling one overlaps the DMA of the other; the copy is queued on
   * {@code stream} and the call returns once the last chunk is queued (the caller's data is already staged).
   */
  private void stagedUpload(long dstAddress, long bytes, CudaStream stream, ChunkWriter fill) {
    checkNotCapturing("a host-to-device transfer (upload)");
    long done = 0;
    int k = 0;
    while (done < bytes) {
      int len = (int) Math.min(STAGING_BYTES, bytes - done);
      PinnedBuffer pb = staging[k];
      stagingFree[k].synchronize(); // the previous DMA out of this buffer has finished
      ByteBuffer buf = pb.buffer();
      buf.clear();
      fill.write(buf, done, len);
      Cuda.check(cuMemcpyHtoDAsync(Cuda.ptr(dstAddress + done), pb.pointer(), len, stream.cu()),
          "cuMemcpyHtoDAsync(" + len + " bytes)");
      stagingFree[k].record(stream);
      done += len;
      k ^= 1;
    }
  }

  /** Device to host through the staging buffers; {@code read} consumes one chunk. Waits for the data. */
  private void stagedDownload(long srcAddress, long bytes, ChunkReader read) {
    checkNotCapturing("a device-to-host transfer (download)");
    long done = 0;
    int k = 0;
    while (done < bytes) {
      int len = (int) Math.min(STAGING_BYTES, bytes - done);
      PinnedBuffer pb = staging[k];
      stagingFree[k].synchronize();
      Cuda.check(cuMemcpyDtoHAsync(pb.pointer(), Cuda.ptr(srcAddress + done), len, compute.cu()),
          "cuMemcpyDtoHAsync(" + len + " bytes)");
      stagingFree[k].record(compute);
      stagingFree[k].synchronize();
      ByteBuffer buf = pb.buffer();
      buf.clear();
      buf.limit(len);
      read.read(buf, done, len);
      done += len;
      k ^= 1;
    }
  }

  @FunctionalInterface
  private interface ChunkWriter {
    void write(ByteBuffer staging, long byteOffset, int length);
  }

  @FunctionalInterface
  private interface ChunkReader {
    void read(ByteBuffer staging, long byteOffset, int length);
  }

  @Override
  public void upload(float[] src, int srcOffset, Tensor dst) {
    uploadOn(src, srcOffset, dst, null);
  }

  /**
   * Like {@link #upload(float[], int, Tensor)} but queued on the copy stream and returning an event that
   * completes when the data is on the device; make the compute stream wait for it ({@code
   * computeStream().waitFor(e)}) before using {@code dst}, then close the event. The staging buffers are
   * shared with the synchronous transfers, which wait for it.
   */
  public CudaEvent uploadAsync(float[] src, int srcOffset, Tensor dst) {
    CudaEvent e = newEvent();
    try {
      uploadOn(src, srcOffset, dst, copy);
      e.record(copy);
      return e;
    } catch (RuntimeException ex) {
      e.close();
      throw ex;
    }
  }

  private void uploadOn(float[] src, int srcOffset, Tensor dst, CudaStream stream) {
    enter();
    CudaTensor d = fl(dst);
    noteWritten(d);
    int n = d.size();
    if (srcOffset < 0 || srcOffset + (long) n > src.length) {
      throw new IndexOutOfBoundsException("upload of " + n + " floats from offset " + srcOffset + " of an array of "
          + src.length);
    }
    CudaStream s = stream == null ? compute : stream;
    boolean bf = d.dtype() == DType.BFLOAT16;
    int eb = d.dtype().bytes();
    stagedUpload(d.address(), (long) n * eb, s, (buf, off, len) -> {
      int first = srcOffset + (int) (off / eb);
      int count = len / eb;
      if (bf) {
        for (int i = 0; i < count; i++) {
          buf.putShort(i * 2, Bf16.bits(src[first + i]));
        }
      } else {
        buf.asFloatBuffer().put(src, first, count);
      }
    });
  }

  @Override
  public void upload(int[] src, int srcOffset, Tensor dst) {
    enter();
    CudaTensor d = in(dst);
    noteWritten(d);
    int n = d.size();
    if (srcOffset < 0 || srcOffset + (long) n > src.length) {
      throw new IndexOutOfBoundsException("upload of " + n + " ints from offset " + srcOffset + " of an array of "
          + src.length);
    }
    stagedUpload(d.address(), 4L * n, compute,
        (buf, off, len) -> buf.asIntBuffer().put(src, srcOffset + (int) (off / 4), len / 4));
  }

  @Override
  public void upload(ByteBuffer src, Tensor dst) {
    enter();
    CudaTensor d = t(dst);
    noteWritten(d);
    long bytes = d.bytes();
    if (src.remaining() < bytes) {
      throw new IllegalArgumentException("upload: the buffer has " + src.remaining() + " bytes left, " + dst
          + " needs " + bytes);
    }
    ByteBuffer s = src.duplicate();
    int base = s.position();
    stagedUpload(d.address(), bytes, compute, (buf, off, len) -> {
      ByteBuffer chunk = s.duplicate();
      chunk.position(base + (int) off).limit(base + (int) off + len);
      buf.put(chunk);
    });
  }

  @Override
  public void download(Tensor src, float[] dst, int dstOffset) {
    enter();
    CudaTensor s = fl(src);
    int n = s.size();
    if (dstOffset < 0 || dstOffset + (long) n > dst.length) {
      throw new IndexOutOfBoundsException("download of " + n + " floats to offset " + dstOffset
          + " of an array of " + dst.length);
    }
    boolean bf = s.dtype() == DType.BFLOAT16;
    int eb = s.dtype().bytes();
    stagedDownload(s.address(), (long) n * eb, (buf, off, len) -> {
      int first = dstOffset + (int) (off / eb);
      int count = len / eb;
      if (bf) {
        ByteBuffer b = buf.order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < count; i++) {
          dst[first + i] = Float.intBitsToFloat((b.getShort(i * 2) & 0xffff) << 16);
        }
      } else {
        buf.asFloatBuffer().get(dst, first, count);
      }
    });
  }

  @Override
  public void download(Tensor src, int[] dst, int dstOffset) {
    enter();
    CudaTensor s = in(src);
    int n = s.size();
    if (dstOffset < 0 || dstOffset + (long) n > dst.length) {
      throw new IndexOutOfBoundsException("download of " + n + " ints to offset " + dstOffset
          + " of an array of " + dst.length);
    }
    stagedDownload(s.address(), 4L * n, (buf, off, len) -> buf.asIntBuffer().get(dst, dstOffset + (int) (off / 4),
        len / 4));
  }

  /** Copies the raw bytes of {@code src} (any dtype) to the host, e.g. for checkpoints. Waits. */
  public void download(Tensor src, ByteBuffer dst) {
    enter();
    CudaTensor s = t(src);
    if (dst.remaining() < s.bytes()) {
      throw new IllegalArgumentException("download: " + dst.remaining() + " bytes left, " + src + " has "
          + s.bytes());
    }
    ByteBuffer d = dst.duplicate();
    int base = d.position();
    stagedDownload(s.address(), s.bytes(), (buf, off, len) -> {
      d.position(base + (int) off);
      d.put(buf);
    });
  }

  // ---------------------------------------------------------------- prefetch (copy stream)

  @Override
  public void prefetch(float[] src, int srcOffset, Tensor dst) {
    enter();
    CudaTensor d = fl(dst);
    int n = d.size();
    if (srcOffset < 0 || srcOffset + (long) n > src.length) {
      throw new IndexOutOfBoundsException("prefetch of " + n + " floats from offset " + srcOffset + " of an array of "
          + src.length);
    }
    boolean bf = d.dtype() == DType.BFLOAT16;
    prefetchBytes(d, (long) n * d.dtype().bytes(), buf -> stageInParts(n, buf, (b, lo, hi) -> {
      if (bf) {
        for (int i = lo; i < hi; i++) {
          b.putShort(i * 2, Bf16.bits(src[srcOffset + i]));
        }
      } else {
        java.nio.FloatBuffer f = b.asFloatBuffer();
        f.position(lo);
        f.put(src, srcOffset + lo, hi - lo);
      }
    }));
  }

  /** Fills values [lo, hi) of a pinned slot through its own view {@code b} of it. */
  @FunctionalInterface
  private interface StagePart {
    void fill(ByteBuffer b, int lo, int hi);
  }

  /**
   * Note [parallel staging]: a large batch (ResNet-50 at 256 x 3 x 224 x 224 fp32: 154 MB) is copied into the
   * pinned slot by several threads, in disjoint ranges of its n values: one thread took ~20 ms of the trainer
   * thread's step, time in which it launches nothing (two ranks in one JVM pay it twice).
   */
  private static void stageInParts(int n, ByteBuffer slot, StagePart part) {
    int parts = n >= PARALLEL_STAGING_MIN ? PARALLEL_STAGING_PARTS : 1;
    java.util.stream.IntStream range = java.util.stream.IntStream.range(0, parts);
    (parts > 1 ? range.parallel() : range).forEach(p -> part.fill(slot.duplicate().order(slot.order()),
        (int) ((long) n * p / parts), (int) ((long) n * (p + 1) / parts)));
  }

  /**
   * Values rounded to bf16 by the loader threads (Note [bf16 input on the loader threads] in data.BatchLoader): a
   * bulk copy into the pinned slot, the same bytes prefetch(float[]) would write from the unrounded floats.
   */
  @Override
  public void prefetchBf16(short[] src, int srcOffset, Tensor dst) {
    enter();
    CudaTensor d = fl(dst);
    if (d.dtype() != DType.BFLOAT16) {
      throw new IllegalArgumentException("prefetchBf16 needs a BFLOAT16 tensor, got " + dst);
    }
    int n = d.size();
    if (srcOffset < 0 || srcOffset + (long) n > src.length) {
      throw new IndexOutOfBoundsException("prefetchBf16 of " + n + " values from offset " + srcOffset
          + " of an array of " + src.length);
    }
    prefetchBytes(d, 2L * n, buf -> stageInParts(n, buf, (b, lo, hi) -> {
      java.nio.ShortBuffer s = b.asShortBuffer();
      s.position(lo);
      s.put(src, srcOffset + lo, hi - lo);
    }));
  }

  /** Note [parallel staging]: batches of at least this many values are staged by several threads. */
  private static final int PARALLEL_STAGING_MIN = 1 << 22;
  private static final int PARALLEL_STAGING_PARTS =
      Math.max(1, Math.min(8, java.util.concurrent.ForkJoinPool.getCommonPoolParallelism()));

  @Override
  public void prefetch(int[] src, int srcOffset, Tensor dst) {
    enter();
    CudaTensor d = in(dst);
    int n = d.size();
    if (srcOffset < 0 || srcOffset + (long) n > src.length) {
      throw new IndexOutOfBoundsException("prefetch of " + n + " ints from offset " + srcOffset + " of an array of "
          + src.length);
    }
    prefetchBytes(d, 4L * n, buf -> buf.asIntBuffer().put(src, srcOffset, n));
  }

  /**
   * Fills the next pinned slot on the host and queues its copy on the copy stream, after the compute work
   * queued so far (it may still read dst). The slot is reused PREFETCH_SLOTS prefetches later, once its
   * copy is done, so the host stays a few batches ahead without waiting for the GPU.
   */
  private void prefetchBytes(CudaTensor d, long bytes, java.util.function.Consumer<ByteBuffer> fill) {
    checkNotCapturing("prefetch (a host-to-device copy on the copy stream)");
    noteWritten(d);
    if (bytes == 0) {
      return;
    }
    if (prefetchOrder == null) {
      prefetchOrder = newEvent();
      prefetchDone = newEvent();
      for (int k = 0; k < PREFETCH_SLOTS; k++) {
        prefetchFree[k] = newEvent();
      }
    }
    int k = prefetchNext;
    prefetchNext = (k + 1) % PREFETCH_SLOTS;
    if (prefetchStaging[k] != null) {
      prefetchFree[k].synchronize(); // its last copy is done (queued PREFETCH_SLOTS prefetches ago)
    }
    if (prefetchStaging[k] == null || prefetchStaging[k].bytes() < bytes) {
      if (prefetchStaging[k] != null) {
        owned.remove(prefetchStaging[k]);
        prefetchStaging[k].close();
      }
      prefetchStaging[k] = own(new PinnedBuffer(this, bytes));
    }
    ByteBuffer buf = prefetchStaging[k].buffer();
    buf.clear();
    fill.accept(buf);
    if (!prefetchOrderMarked) {
      prefetchOrder.record(compute);
    }
    copy.waitFor(prefetchOrder);
    Cuda.check(cuMemcpyHtoDAsync(Cuda.ptr(d.address()), prefetchStaging[k].pointer(), bytes, copy.cu()),
        "cuMemcpyHtoDAsync(prefetch, " + bytes + " bytes)");
    prefetchFree[k].record(copy);
    prefetchPending = true;
  }

  @Override
  public void awaitPrefetch() {
    enter();
    checkNotCapturing("awaitPrefetch (a wait for the copy stream)");
    prefetchOrderMarked = false;
    if (prefetchPending) {
      prefetchDone.record(copy);
      compute.waitFor(prefetchDone);
      prefetchPending = false;
    }
  }

  @Override
  public void markPrefetchOrder() {
    enter();
    checkNotCapturing("markPrefetchOrder (an event on the compute stream for the copy stream)");
    if (prefetchOrder == null) {
      return; // no prefetch yet: the next one records its order itself
    }
    prefetchOrder.record(compute);
    prefetchOrderMarked = true;
  }

  // ---------------------------------------------------------------- CUDA graphs (Note [CUDA graphs] in train.Trainer)
  // captureGraph records the compute stream's work by stream capture: the project's kernels (cuLaunchKernel
  // copies their arguments into the graph), memsets, device-to-device copies, and what cuBLASLt and cuDNN queue
  // on the stream (their handles are bound to it). While a capture runs, whatever here would allocate or free
  // device memory, move data between the host and the device, or wait on the host throws (checkNotCapturing)
  // instead of hanging, failing deep inside CUDA, or baking a staging buffer into the graph; the capture is then
  // ended, its graph dropped, and GraphCaptureException says why. The one piece of this device's host state a
  // step changes (whether the parameters' bf16 mirror is current) is put back when a capture fails and carried
  // forward by each replay (CudaGraph).

  /**
   * -Dsparktrainer.cuda.graphs.captureMode: {@code threadLocal} (the default: CUDA fails this thread's unsafe
   * calls while it captures and leaves other threads alone, e.g. the other ranks of a local launcher), {@code
   * global} (every thread's unsafe calls fail while any capture runs), or {@code relaxed} (CUDA checks nothing;
   * the checks of this class still apply).
   */
  static final String CAPTURE_MODE = System.getProperty("sparktrainer.cuda.graphs.captureMode", "threadLocal");
  private volatile String capturing; // null, or what is being captured (for messages)
  private volatile long memoryFrees; // device allocations freed so far (CudaGraph.freesAtCapture)
  private boolean captureSkippedRefresh; // refreshMirror found the mirror current during the capture
  private boolean captureRefreshedMirror; // refreshMirror copied during the capture
  private final Set<CudaGraph> graphs = new LinkedHashSet<>(); // open graphs, destroyed when the device closes
  private long graphLaunches;

  private static int captureMode(String mode) {
    return switch (mode) {
      case "threadLocal" -> jcuda.driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
      case "global" -> jcuda.driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL;
      case "relaxed" -> jcuda.driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED;
      default -> throw new IllegalArgumentException(
          "-Dsparktrainer.cuda.graphs.captureMode must be threadLocal (the default), global or relaxed, got '" + mode
              + "'");
    };
  }

  /**
   * Throws while this device captures a CUDA graph: {@code what} (an allocation, a free, a host transfer or a
   * host wait) cannot be part of a replayable step. Called by the allocator, the host transfers, and the
   * streams' and events' host waits.
   */
  void checkNotCapturing(String what) {
    String c = capturing;
    if (c != null) {
      throw new IllegalStateException(name + ": " + what + " while capturing a CUDA graph (" + c + "). A captured"
          + " step may only queue work on the compute stream: no allocation or free of device memory, no transfer"
          + " to or from the host, no wait for the device. Run the step eagerly until its buffers, workspaces and"
          + " plans exist (the trainer's warm-up steps), and keep host reads out of the captured work (Note [CUDA"
          + " graphs] in train.Trainer)");
    }
  }

  /** Whether a CUDA graph capture is running on this device. */
  public boolean isCapturing() {
    return capturing != null;
  }

  /** Graph launches so far (each capture's first run and every replay); tests check that graphs ran. */
  public long graphLaunches() {
    return graphLaunches;
  }

  /**
   * {@link Device#captureGraph} on the compute stream: begins stream capture, runs {@code work}, ends the capture,
   * instantiates the graph and launches it once (so the work has run, as without a graph). Throws {@link
   * dev.sparktrainer.engine.GraphCaptureException}, with the compute stream back to normal, nothing of the work run and the mirror's state
   * as before, when the work throws (checkNotCapturing, or a library call that failed under capture), when CUDA
   * invalidated the capture (an unsafe call), or when the graph cannot be instantiated; and, without running the
   * work, while the op profile is on.
   */
  @Override
  public dev.sparktrainer.engine.StepGraph captureGraph(Runnable work) {
    enter();
    if (capturing != null) {
      throw new IllegalStateException(name + ": captureGraph called inside a capture (" + capturing + ")");
    }
    if (opProfile != null) {
      throw new dev.sparktrainer.engine.GraphCaptureException(name + ": no CUDA graph while the op profile is on (it"
          + " waits for the device after every op, which a capture cannot); turn it off with setOpProfiling(false)",
          null);
    }
    int mode = captureMode(CAPTURE_MODE);
    boolean mirrorBefore = mirrorFresh;
    captureSkippedRefresh = false;
    captureRefreshedMirror = false;
    int begun;
    try {
      begun = jcuda.driver.JCudaDriver.cuStreamBeginCapture(compute.cu(), mode);
    } catch (LinkageError e) { // a JCuda native library without graph support: run without graphs
      throw new dev.sparktrainer.engine.GraphCaptureException(name + ": JCuda cannot capture: " + e, null);
    }
    if (begun != jcuda.driver.CUresult.CUDA_SUCCESS) {
      throw new dev.sparktrainer.engine.GraphCaptureException(name + ": cuStreamBeginCapture(compute, " + CAPTURE_MODE
          + ") failed: " + Cuda.errorText(begun), null);
    }
    capturing = "captureGraph on the compute stream";
    jcuda.driver.CUgraph graph = new jcuda.driver.CUgraph();
    RuntimeException failure = null;
    boolean returned = false;
    int ended;
    try {
      work.run();
      returned = true;
    } catch (RuntimeException e) {
      failure = e;
    } finally {
      capturing = null;
      ended = jcuda.driver.JCudaDriver.cuStreamEndCapture(compute.cu(), graph);
      if (!returned && failure == null) { // an Error is on its way out: drop the graph, put the state back
        mirrorFresh = mirrorBefore;
        if (ended == jcuda.driver.CUresult.CUDA_SUCCESS) {
          jcuda.driver.JCudaDriver.cuGraphDestroy(graph);
        }
      }
    }
    String why = null;
    if (failure != null) {
      why = failure.getClass().getSimpleName() + ": " + failure.getMessage();
    } else if (ended != jcuda.driver.CUresult.CUDA_SUCCESS) {
      why = "cuStreamEndCapture failed: " + Cuda.errorText(ended)
          + (ended == jcuda.driver.CUresult.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED ? " (a call during the capture is"
              + " not capturable: an unsafe CUDA call on this thread, or a library that waited for the device)" : "");
    }
    jcuda.driver.CUgraphExec exec = new jcuda.driver.CUgraphExec();
    if (why == null) {
      int r = jcuda.driver.JCudaDriver.cuGraphInstantiate(exec, graph, 0);
      if (r != jcuda.driver.CUresult.CUDA_SUCCESS) {
        why = "cuGraphInstantiate failed: " + Cuda.errorText(r);
      }
    }
    if (why != null) {
      mirrorFresh = mirrorBefore; // a refresh captured but never run did not refresh anything
      if (ended == jcuda.driver.CUresult.CUDA_SUCCESS) {
        jcuda.driver.JCudaDriver.cuGraphDestroy(graph);
      }
      requireStreamsNotCapturing();
      throw new dev.sparktrainer.engine.GraphCaptureException(name + ": the work cannot be captured as a CUDA graph: "
          + why, failure);
    }
    CudaGraph g = new CudaGraph(this, graph, exec, memoryFrees, mirrorSrc, mirrorDst, captureSkippedRefresh,
        captureRefreshedMirror, mirrorFresh);
    synchronized (graphs) {
      graphs.add(g);
    }
    launch(g);
    return g;
  }

  /** After a failed capture: every stream of this device is out of capture mode, or the device is unusable. */
  private void requireStreamsNotCapturing() {
    for (CudaStream s : new CudaStream[] {compute, copy, comm}) {
      int[] status = {0};
      int r = jcuda.driver.JCudaDriver.cuStreamIsCapturing(s.cu(), status);
      if (r == jcuda.driver.CUresult.CUDA_SUCCESS
          && status[0] != jcuda.driver.CUstreamCaptureStatus.CU_STREAM_CAPTURE_STATUS_NONE) {
        jcuda.driver.CUgraph g = new jcuda.driver.CUgraph();
        if (jcuda.driver.JCudaDriver.cuStreamEndCapture(s.cu(), g) == jcuda.driver.CUresult.CUDA_SUCCESS) {
          jcuda.driver.JCudaDriver.cuGraphDestroy(g);
        }
        r = jcuda.driver.JCudaDriver.cuStreamIsCapturing(s.cu(), status);
      }
      Cuda.check(r, "cuStreamIsCapturing(" + s.name() + ") after a failed capture");
      if (status[0] != jcuda.driver.CUstreamCaptureStatus.CU_STREAM_CAPTURE_STATUS_NONE) {
        throw new CudaException("CUDA driver", jcuda.driver.CUresult.CUDA_ERROR_STREAM_CAPTURE_UNJOINED, name
            + ": the " + s.name() + " stream is still capturing after a failed CUDA graph capture; this device"
            + " cannot be used any more (close it)");
      }
    }
  }

  /** CudaGraph#replay: launches g when the device state it was captured in still holds, else false. */
  boolean replayGraph(CudaGraph g) {
    enter();
    if (capturing != null) {
      throw new IllegalStateException(name + ": a CUDA graph replay inside a capture (" + capturing + ")");
    }
    String stale = g.freesAtCapture != memoryFrees
        ? "device memory was freed since its capture (a scratch buffer was replaced), so it may use freed memory"
        : g.mirrorSrc != mirrorSrc || g.mirrorDst != mirrorDst
            ? "another bf16 parameter mirror was registered since its capture"
            : g.needsFreshMirror && !mirrorFresh
                ? "the parameters' bf16 mirror is stale (the parameters were written other than by the fused"
                    + " optimizer step) and the capture had found it current, so the graph does not refresh it"
                : null;
    if (stale != null) {
      if (g.firstStale()) {
        LOG.log(System.Logger.Level.INFO, "{0}: a CUDA graph is not replayed: {1}", name, stale);
      }
      return false;
    }
    boolean before = mirrorFresh;
    launch(g);
    mirrorFresh = g.refreshesMirror ? g.mirrorFreshAfter : before && g.mirrorFreshAfter;
    return true;
  }

  private void launch(CudaGraph g) {
    Cuda.check(jcuda.driver.JCudaDriver.cuGraphLaunch(g.exec, compute.cu()), "cuGraphLaunch(compute)");
    graphLaunches++;
  }

  /** CudaGraph#close: destroys its executable graph and graph (an in-flight launch completes first). */
  void destroyGraph(CudaGraph g) {
    synchronized (graphs) {
      if (!graphs.remove(g)) {
        return; // destroyed when the device closed
      }
    }
    makeCurrent();
    Cuda.check(jcuda.driver.JCudaDriver.cuGraphExecDestroy(g.exec), "cuGraphExecDestroy");
    Cuda.check(jcuda.driver.JCudaDriver.cuGraphDestroy(g.graph), "cuGraphDestroy");
  }

  /** At close: ends a capture left running (close called from inside the work) and lists the open graphs. */
  private List<CudaGraph> releaseGraphs() {
    if (capturing != null) {
      capturing = null;
      jcuda.driver.CUgraph g = new jcuda.driver.CUgraph();
      if (jcuda.driver.JCudaDriver.cuStreamEndCapture(compute.cu(), g) == jcuda.driver.CUresult.CUDA_SUCCESS) {
        jcuda.driver.JCudaDriver.cuGraphDestroy(g);
      }
    }
    synchronized (graphs) {
      return new ArrayList<>(graphs);
    }
  }

  // ---------------------------------------------------------------- the parameters' bf16 mirror

  @Override
  public boolean prefersFusedLinear() {
    return true;
  }

  @Override
  public void registerMirror(Tensor src, Tensor mirror) {
    enter();
    CudaTensor s = f32(fl(src), "registerMirror (source)");
    CudaTensor m = fl(mirror);
    if (m.dtype() != DType.BFLOAT16 || m.numel() != s.numel()) {
      throw new IllegalArgumentException("registerMirror: the mirror must be BFLOAT16 with " + s.numel()
          + " elements, got " + mirror);
    }
    mirrorSrc = s;
    mirrorDst = m;
    mirrorFresh = false;
  }

  @Override
  public void refreshMirror(Tensor src, Tensor mirror) {
    enter();
    boolean registered = isRegisteredMirror(src, mirror);
    if (mirrorFresh && registered) {
      captureSkippedRefresh |= capturing != null; // a replay of this capture needs a current mirror (CudaGraph)
      return;
    }
    copy(src, mirror);
    if (registered) {
      mirrorFresh = true;
      captureRefreshedMirror |= capturing != null;
    }
  }

  /** Whether src and mirror are the registered parameters and their mirror (registerMirror). */
  private boolean isRegisteredMirror(Tensor src, Tensor mirror) {
    return isMirrorSource(t(src)) && t(mirror).address() == mirrorDst.address() && mirror.numel() == mirrorDst.numel();
  }

  private boolean isMirrorSource(CudaTensor p) {
    return mirrorSrc != null && p.address() == mirrorSrc.address() && p.numel() == mirrorSrc.numel()
        && p.dtype() == DType.FLOAT32;
  }

  /**
   * The mirror's address for the fp32 parameters {@code p} when they are the mirror source or a slice of it
   * (Note [sharded optimizer] in train.Trainer: the optimizer steps over this rank's slices and writes their mirror
   * in the same pass), else 0.
   */
  private long mirrorAddressOf(CudaTensor p) {
    if (mirrorSrc == null || p.dtype() != DType.FLOAT32 || p.address() < mirrorSrc.address()
        || p.address() + p.bytes() > mirrorSrc.address() + mirrorSrc.bytes()) {
      return 0;
    }
    return mirrorDst.address() + (p.address() - mirrorSrc.address()) / 2;
  }

  @Override
  public boolean tracksMirror() {
    return true;
  }

  @Override
  public void markMirrorCurrent(Tensor src, Tensor mirror) {
    enter();
    if (!isRegisteredMirror(src, mirror)) {
      throw new IllegalArgumentException("markMirrorCurrent: " + src + " and " + mirror + " are not the registered"
          + " parameters and mirror");
    }
    mirrorFresh = true;
  }

  /** Every op that writes device memory reports the tensor here (marks the parameters' mirror stale). */
  void noteWritten(CudaTensor x) {
    if (mirrorFresh && x.address() < mirrorSrc.address() + mirrorSrc.bytes()
        && mirrorSrc.address() < x.address() + x.bytes()) {
      mirrorFresh = false;
    }
  }

  // ---------------------------------------------------------------- elementwise and BLAS-1

  @Override
  public void fill(Tensor x, float value) {
    enter();
    CudaTensor c = t(x);
    noteWritten(c);
    long n = c.numel();
    if (n == 0) {
      return;
    }
    if (c.dtype() == DType.INT32) {
      kernels.launch("st_fill_i32").l(c.address()).l(n).i((int) value).run(grid(n), BLOCK, compute);
    } else if (value == 0f && Float.floatToRawIntBits(value) == 0) {
      Cuda.check(cuMemsetD8Async(Cuda.ptr(c.address()), (byte) 0, c.bytes(), compute.cu()), "cuMemsetD8Async");
    } else {
      kernels.launch("st_fill").l(c.address()).i(code(c)).l(n).f(value).run(grid(n), BLOCK, compute);
    }
  }

  @Override
  public void copy(Tensor src, Tensor dst) {
    enter();
    sameSize(src, dst, "copy");
    CudaTensor s = t(src);
    CudaTensor d = t(dst);
    noteWritten(d);
    adoptLayout("copy", s, d);
    long n = s.numel();
    if (n == 0) {
      return;
    }
    if ((s.dtype() == DType.INT32) != (d.dtype() == DType.INT32)) {
      throw new IllegalArgumentException("copy: cannot convert between int32 and float: " + src + " -> " + dst);
    }
    if (s.dtype() == d.dtype()) {
      Cuda.check(cuMemcpyDtoDAsync(Cuda.ptr(d.address()), Cuda.ptr(s.address()), s.bytes(), compute.cu()),
          "cuMemcpyDtoDAsync");
    } else {
      kernels.launch("st_copy").l(s.address()).i(code(s)).l(d.address()).i(code(d)).l(n).run(grid(n), BLOCK, compute);
    }
  }

  @Override
  public void axpy(float alpha, Tensor x, Tensor y) {
    enter();
    sameSize(x, y, "axpy");
    CudaTensor a = fl(x);
    CudaTensor b = fl(y);
    noteWritten(b);
    sameLayout("axpy", a, b);
    long n = a.numel();
    if (n > 0) {
      kernels.launch("st_axpy").f(alpha).l(a.address()).i(code(a)).l(b.address()).i(code(b)).l(n)
          .run(grid(n), BLOCK, compute);
    }
  }

  @Override
  public void add(Tensor a, Tensor b, Tensor y) {
    add(a, b, y, false);
  }

  @Override
  public void add(Tensor a, Tensor b, Tensor y, boolean relu) {
    enter();
    sameSize(a, y, "add");
    sameSize(b, y, "add");
    CudaTensor ca = fl(a);
    CudaTensor cb = fl(b);
    CudaTensor cy = fl(y);
    sameLayout("add", ca, cb);
    noteWritten(cy);
    adoptLayout("add", ca, cy);
    long n = ca.numel();
    if (n > 0) {
      boolean v = vec8(n, ca, cb, cy);
      kernels.launch("st_add2").l(ca.address()).i(code(ca)).l(cb.address()).i(code(cb)).l(cy.address()).i(code(cy))
          .l(n).i(relu ? 1 : 0).i(v ? 1 : 0).run(grid(v ? n / 8 : n), BLOCK, compute);
    }
  }

  @Override
  public void scale(Tensor x, float alpha) {
    enter();
    CudaTensor a = fl(x);
    noteWritten(a);
    long n = a.numel();
    if (n > 0) {
      kernels.launch("st_scale").l(a.address()).i(code(a)).l(n).f(alpha).run(grid(n), BLOCK, compute);
    }
  }

  /**
   * Gradient (un)scaling for mixed precision: x *= alpha, and returns whether every result is finite
   * (waits for the device). One pass over the flat gradient buffer.
   */
  public boolean scaleAndCheckFinite(Tensor x, float alpha) {
    enter();
    CudaTensor a = fl(x);
    noteWritten(a);
    long n = a.numel();
    long flag = scratch.address() + (MAX_PARTIALS + 1) * 8L;
    Cuda.check(cuMemsetD8Async(Cuda.ptr(flag), (byte) 0, 4, compute.cu()), "cuMemsetD8Async");
    if (n > 0) {
      kernels.launch("st_scale_check").l(a.address()).i(code(a)).l(n).f(alpha).l(flag).run(grid(n), BLOCK, compute);
    }
    Cuda.check(cuMemcpyDtoHAsync(hostScratch.pointer(), Cuda.ptr(flag), 4, compute.cu()), "cuMemcpyDtoHAsync");
    compute.synchronize();
    return hostScratch.buffer().getInt(0) == 0;
  }

  /** Queues sum (or sum of squares) of x into scratch[MAX_PARTIALS] and, when accum != 0, accum[0] += it. */
  private void reduce(CudaTensor x, boolean squares, long accum) {
    long n = x.numel();
    long partials = scratch.address();
    int g = (int) Math.max(1, Math.min((n + BLOCK - 1) / BLOCK, Math.min(MAX_PARTIALS, smCount * 4L)));
    kernels.launch("st_sum_partial").l(x.address()).i(code(x)).l(n).i(squares ? 1 : 0).l(partials)
        .run(g, BLOCK, compute);
    kernels.launch("st_sum_final").l(partials).i(g).l(partials + MAX_PARTIALS * 8L).l(accum).run(1, BLOCK, compute);
  }

  private double reduceToHost(CudaTensor x, boolean squares) {
    reduce(x, squares, 0);
    Cuda.check(cuMemcpyDtoHAsync(hostScratch.pointer(), Cuda.ptr(scratch.address() + MAX_PARTIALS * 8L), 8,
        compute.cu()), "cuMemcpyDtoHAsync");
    compute.synchronize();
    return hostScratch.buffer().getDouble(0);
  }

  @Override
  public double sum(Tensor x) {
    enter();
    return reduceToHost(t(x), false);
  }

  @Override
  public double sumSquares(Tensor x) {
    enter();
    return reduceToHost(fl(x), true);
  }

  @Override
  public void sumInto(Tensor x, Tensor accum) {
    enter();
    CudaTensor acc = f32(fl(accum), "sumInto (accumulator)");
    noteWritten(acc);
    reduce(t(x), false, acc.address());
  }

  // ---------------------------------------------------------------- matmul

  @Override
  public void matmul(Tensor a, boolean transA, Tensor b, boolean transB, Tensor c, float alpha, float beta) {
    enter();
    int[] mnk = Shape.checkMatmul(a, transA, b, transB, c);
    int m = mnk[0];
    int n = mnk[1];
    int k = mnk[2];
    CudaTensor ca = fl(a);
    CudaTensor cb = fl(b);
    CudaTensor cc = fl(c);
    noteWritten(cc);
    if (m == 0 || n == 0) {
      return;
    }
    if (k == 0) {
      scale(cc, beta); // C = beta * C, as BLAS does for k = 0
      return;
    }
    BlasLt lt = ca.dtype() == cb.dtype() ? blasLt() : null;
    if (lt != null) {
      lt.matmulRowMajor(transA, transB, m, n, k, alpha, ca.address(), Math.max(1, a.dim(1)), code(ca),
          cb.address(), Math.max(1, b.dim(1)), code(cb), beta, cc.address(), n, code(cc), options.tf32(), 0, 0,
          compute);
    } else {
      matmulReference(ca, transA, cb, transB, cc, alpha, beta);
    }
  }

  /**
   * The plain reference GEMM kernel (one thread per output, k summed in order in fp32), whatever the
   * device's matmul backend: the tests compare cuBLASLt against it.
   */
  public void matmulReference(Tensor a, boolean transA, Tensor b, boolean transB, Tensor c, float alpha,
      float beta) {
    enter();
    CudaTensor ca = fl(a);
    CudaTensor cb = fl(b);
    CudaTensor cc = fl(c);
    noteWritten(cc);
    long m = cc.dim(0);
    long n = cc.dim(1);
    long k = transA ? a.dim(0) : a.dim(1);
    if ((transB ? b.dim(1) : b.dim(0)) != k || (transA ? a.dim(1) : a.dim(0)) != m
        || (transB ? b.dim(0) : b.dim(1)) != n) {
      throw new IllegalArgumentException("matmul shapes do not agree: " + a + ", " + b + ", " + c);
    }
    if (m * n == 0) {
      return;
    }
    kernels.launch("st_gemm_ref").l(ca.address()).i(code(ca)).i(transA ? 1 : 0).l(Math.max(1, a.dim(1)))
        .l(cb.address()).i(code(cb)).i(transB ? 1 : 0).l(Math.max(1, b.dim(1))).l(cc.address()).i(code(cc)).l(n)
        .l(m).l(n).l(k).f(alpha).f(beta).run(grid(m * n), BLOCK, compute);
  }

  /** x (N, in), w (out, in), bias (out) or null and y (N, out) of a linear layer's forward, or an exception. */
  private static void checkLinear(String op, Tensor x, Tensor w, Tensor bias, Tensor y) {
    if (x.rank() != 2 || w.rank() != 2 || y.rank() != 2 || x.dim(1) != w.dim(1) || y.dim(0) != x.dim(0)
        || y.dim(1) != w.dim(0)) {
      throw new IllegalArgumentException(op + " shapes do not agree: x=" + x + ", w=" + w + ", y=" + y);
    }
    if (bias != null && (bias.numel() != w.dim(0) || bias.dtype() == DType.INT32)) {
      throw new IllegalArgumentException(op + ": bias must be a float vector of " + w.dim(0) + ", got " + bias);
    }
  }

  /**
   * y = act(x W^T + bias), act = ReLU or identity, in one cuBLASLt call with a bias/ReLU epilogue: x (N, in),
   * w (out, in), bias (out) or null, y (N, out), fp32 or bf16 (x and w of one dtype). The epilogue needs the
   * bias in y's dtype (fp32 for fp32 y, bf16 for bf16 y, as PyTorch's autocast linear); otherwise, or when
   * cuBLASLt has no algorithm with that epilogue for the shape (remembered per shape), the GEMM runs without
   * it and one fused bias + ReLU kernel follows. Without cuBLASLt: matmul + addBias (+ relu).
   */
  @Override
  public void linearForward(Tensor x, Tensor w, Tensor bias, boolean relu, Tensor y) {
    enter();
    CudaTensor cx = fl(x);
    CudaTensor cw = fl(w);
    CudaTensor cy = fl(y);
    noteWritten(cy);
    checkLinear("linearForward", x, w, bias, y);
    BlasLt lt = cx.dtype() == cw.dtype() ? blasLt() : null;
    if (lt == null || x.dim(0) == 0 || x.dim(1) == 0) {
      matmul(x, false, w, true, y, 1f, 0f);
      if (bias != null) {
        addBias(y, bias);
      }
      if (relu) {
        relu(y, y);
      }
      return;
    }
    int epilogue = (relu ? 2 : 0) + (bias != null ? 1 : 0);
    String key = x.dim(0) + "x" + w.dim(0) + "x" + x.dim(1) + ":" + cx.dtype() + cy.dtype() + epilogue;
    boolean useEpilogue = epilogue != 0 && (bias == null || bias.dtype() == cy.dtype())
        && !epilogueUnsupported.contains(key);
    if (useEpilogue) {
      int st = lt.tryMatmulRowMajor(false, true, x.dim(0), w.dim(0), x.dim(1), 1f, cx.address(), x.dim(1), code(cx),
          cw.address(), w.dim(1), code(cw), 0f, cy.address(), w.dim(0), code(cy), options.tf32(), epilogue,
          bias == null ? 0 : t(bias).address(), compute);
      if (st == 0) {
        return;
      }
      epilogueFailed("epilogue " + epilogue, key, st);
    }
    lt.matmulRowMajor(false, true, x.dim(0), w.dim(0), x.dim(1), 1f, cx.address(), x.dim(1), code(cx),
        cw.address(), w.dim(1), code(cw), 0f, cy.address(), w.dim(0), code(cy), options.tf32(), 0, 0, compute);
    if (epilogue != 0) {
      long n = (long) x.dim(0) * w.dim(0);
      CudaTensor cb = bias == null ? null : fl(bias);
      kernels.launch("st_bias_act").l(cy.address()).i(code(cy)).l(cb == null ? 0 : cb.address())
          .i(cb == null ? 0 : code(cb)).l(x.dim(0)).l(w.dim(0)).i(relu ? 1 : 0).run(grid(n), BLOCK, compute);
    }
  }

  /**
   * A matmul with {@code epilogue} returned status {@code st} for {@code key}: remembered, so the shape takes the
   * kernel path from now on (logged once); during a CUDA graph capture it throws instead, as the status is then not a
   * fact about the shape (Note [CUDA graphs]).
   */
  private void epilogueFailed(String epilogue, String key, int st) {
    if (capturing != null) {
      Native.check(st, "cublasLtMatmul with " + epilogue + " for " + key + " during CUDA graph capture");
    }
    LOG.log(System.Logger.Level.INFO, "{0}: cuBLASLt {1} not available for {2} ({3}); using a kernel", name, epilogue,
        key, Native.errorString(st));
    epilogueUnsupported.add(key);
  }

  /**
   * Note [fused GELU] in nn.Linear: one cuBLASLt call with the GELU_AUX_BIAS (or GELU_AUX) epilogue, y = GELU(x W^T
   * + bias) and pre = x W^T + bias, where cuBLASLt has it for the shape (remembered per shape, as linearForward's
   * epilogues) and pre's rows are a multiple of 8 elements; else linearForward into pre, then the GELU kernel.
   */
  @Override
  public void linearForwardGelu(Tensor x, Tensor w, Tensor bias, Tensor pre, Tensor y) {
    enter();
    CudaTensor cx = fl(x);
    CudaTensor cw = fl(w);
    CudaTensor cp = fl(pre);
    CudaTensor cy = fl(y);
    checkLinear("linearForwardGelu", x, w, bias, y);
    if (!java.util.Arrays.equals(pre.shape(), y.shape()) || cp.dtype() != cy.dtype()) {
      throw new IllegalArgumentException("linearForwardGelu: pre must have y's shape and dtype, got pre=" + pre
          + ", y=" + y);
    }
    int epilogue = bias != null ? 4 : 5;
    String key = "gelu " + x.dim(0) + "x" + w.dim(0) + "x" + x.dim(1) + ":" + cx.dtype() + cy.dtype() + epilogue;
    BlasLt lt = cx.dtype() == cw.dtype() && (bias == null || bias.dtype() == cy.dtype()) && w.dim(0) % 8 == 0
        && x.dim(0) > 0 && x.dim(1) > 0 && !epilogueUnsupported.contains(key) ? blasLt() : null;
    if (lt != null) {
      int st = lt.tryMatmulRowMajor(false, true, x.dim(0), w.dim(0), x.dim(1), 1f, cx.address(), x.dim(1), code(cx),
          cw.address(), w.dim(1), code(cw), 0f, cy.address(), w.dim(0), code(cy), options.tf32(), epilogue,
          bias == null ? 0 : t(bias).address(), cp.address(), w.dim(0), compute);
      if (st == 0) {
        noteWritten(cy);
        noteWritten(cp);
        return;
      }
      epilogueFailed("GELU epilogue " + epilogue, key, st);
    }
    linearForward(x, w, bias, false, pre);
    gelu(pre, y);
  }

  /**
   * dz = h == null ? dh : dh * (h > 0), and dbias = (accumulate ? dbias : 0) + column sums of dz, in one pass
   * over (N, C) plus a small second pass over C (Note [deterministic column sums] in native/kernels/linear.cuh:
   * no atomics, same bits on every run and rank). The sums are taken before rounding to dz's dtype.
   */
  @Override
  public void linearActBackward(Tensor dh, Tensor h, Tensor dz, Tensor dbias, boolean accumulate) {
    actBackwardColsum("st_act_bwd_colsum", dh, h, dz, dbias, accumulate);
  }

  /** linearActBackward for a GELU, h its input (Note [fused GELU] in nn.Linear): the same pass, GELU's derivative. */
  @Override
  public void linearGeluBackward(Tensor dh, Tensor pre, Tensor dz, Tensor dbias, boolean accumulate) {
    java.util.Objects.requireNonNull(pre, "linearGeluBackward: GELU's input");
    actBackwardColsum("st_gelu_bwd_colsum", dh, pre, dz, dbias, accumulate);
  }

  private void actBackwardColsum(String kernel, Tensor dh, Tensor h, Tensor dz, Tensor dbias, boolean accumulate) {
    enter();
    CudaTensor g = fl(dh);
    CudaTensor o = fl(dz);
    CudaTensor m = h == null ? null : fl(h);
    CudaTensor db = dbias == null ? null : fl(dbias);
    sameSize(dh, dz, "linearActBackward");
    if (m != null) {
      sameSize(dh, h, "linearActBackward");
    }
    if (dh.rank() != 2 || (db != null && db.numel() != dh.dim(1))) {
      throw new IllegalArgumentException("linearActBackward: dh must be (N, C) and dbias (C); got " + dh + ", " + dbias);
    }
    noteWritten(o);
    long rows = dh.dim(0);
    long cols = dh.dim(1);
    if (cols == 0) {
      return;
    }
    if (db != null) {
      noteWritten(db);
    }
    int chunks = (int) Math.max(1, (rows + COLSUM_ROWS - 1) / COLSUM_ROWS);
    long partials = 0;
    if (db != null) {
      long need = 4L * chunks * cols;
      if (colsumPartials == null || colsumPartials.bytes() < need) {
        if (colsumPartials != null) {
          compute.synchronize(); // the old scratch may still be read by queued work
          colsumPartials.close();
        }
        colsumPartials = arena.allocate(Math.max(need, 1L << 20), "column-sum partials");
      }
      partials = colsumPartials.address();
    }
    if (rows > 0) {
      kernels.launch(kernel).l(g.address()).i(code(g)).l(m == null ? 0 : m.address())
          .i(m == null ? 0 : code(m)).l(o.address()).i(code(o)).l(rows).l(cols).l(partials)
          .run2d((int) ((cols + 31) / 32), chunks, 32, 8, compute);
    }
    if (db != null) {
      if (rows == 0) {
        if (!accumulate) {
          fill(db, 0f);
        }
        return;
      }
      kernels.launch("st_colsum_final").l(partials).l(chunks).l(cols).l(db.address()).i(code(db))
          .i(accumulate ? 1 : 0).run(grid(cols), BLOCK, compute);
    }
  }

  @Override
  public void addBias(Tensor y, Tensor bias) {
    enter();
    CudaTensor cy = fl(y);
    noteWritten(cy);
    CudaTensor cb = fl(bias);
    int cols = bias.size();
    if (y.rank() < 2 || Shape.rowSize(y.shape()) != cols) {
      throw new IllegalArgumentException("addBias: " + y + " rows do not match bias " + bias);
    }
    long rows = y.dim(0);
    if (rows * cols > 0) {
      kernels.launch("st_add_bias").l(cy.address()).i(code(cy)).l(cb.address()).i(code(cb)).l(rows).l(cols)
          .run(grid(rows * cols), BLOCK, compute);
    }
  }

  @Override
  public void biasGrad(Tensor dy, Tensor dbias) {
    enter();
    CudaTensor cdy = fl(dy);
    CudaTensor cdb = fl(dbias);
    noteWritten(cdb);
    int cols = dbias.size();
    if (dy.rank() < 2 || Shape.rowSize(dy.shape()) != cols) {
      throw new IllegalArgumentException("biasGrad: " + dy + " rows do not match " + dbias);
    }
    long rows = dy.dim(0);
    if (cols > 0) {
      kernels.launch("st_bias_grad").l(cdy.address()).i(code(cdy)).l(cdb.address()).i(code(cdb)).l(rows).l(cols)
          .run(grid(cols), BLOCK, compute);
    }
  }

  // ---------------------------------------------------------------- activations

  private void unary(String kernel, Tensor x, Tensor y) {
    enter();
    sameSize(x, y, kernel);
    CudaTensor a = fl(x);
    CudaTensor b = fl(y);
    noteWritten(b);
    adoptLayout(kernel, a, b);
    long n = a.numel();
    if (n > 0) {
      kernels.launch(kernel).l(a.address()).i(code(a)).l(b.address()).i(code(b)).l(n).run(grid(n), BLOCK, compute);
    }
  }

  /** {@code vectorised}: the kernel takes a trailing vec flag (vec.cuh) and 8 values per thread when it is set. */
  private void backward(String kernel, Tensor x, Tensor dy, Tensor dx, boolean vectorised) {
    enter();
    sameSize(x, dy, kernel);
    sameSize(x, dx, kernel);
    CudaTensor a = fl(x);
    CudaTensor g = fl(dy);
    CudaTensor o = fl(dx);
    noteWritten(o);
    sameLayout(kernel, a, g);
    adoptLayout(kernel, g, o);
    long n = a.numel();
    if (n > 0) {
      Kernels.Launch l = kernels.launch(kernel).l(a.address()).i(code(a)).l(g.address()).i(code(g)).l(o.address())
          .i(code(o)).l(n);
      if (vectorised) {
        boolean v = vec8(n, a, g, o);
        l.i(v ? 1 : 0).run(grid(v ? n / 8 : n), BLOCK, compute);
      } else {
        l.run(grid(n), BLOCK, compute);
      }
    }
  }

  /**
   * Whether a kernel may take 8 values per access (vec.cuh): the vectorised dimension {@code len} is a multiple of
   * 8 and every tensor's address is 16-byte aligned (views at odd offsets are not).
   */
  private static boolean vec8(long len, CudaTensor... ts) {
    if (len % 8 != 0) {
      return false;
    }
    for (CudaTensor t : ts) {
      if (t != null && t.address() % 16 != 0) {
        return false;
      }
    }
    return true;
  }

  @Override
  public void relu(Tensor x, Tensor y) {
    unary("st_relu", x, y);
  }

  @Override
  public void reluBackward(Tensor x, Tensor dy, Tensor dx) {
    backward("st_relu_bwd", x, dy, dx, true);
  }

  @Override
  public void gelu(Tensor x, Tensor y) {
    unary("st_gelu", x, y);
  }

  @Override
  public void geluBackward(Tensor x, Tensor dy, Tensor dx) {
    backward("st_gelu_bwd", x, dy, dx, false);
  }

  @Override
  public void dropout(Tensor x, Tensor y, float p, long seed, long offset) {
    enter();
    sameSize(x, y, "dropout");
    CudaTensor a = fl(x);
    CudaTensor b = fl(y);
    noteWritten(b);
    adoptLayout("dropout", a, b);
    long n = a.numel();
    float s = 1f / (1f - p); // computed here in float, as CpuDevice does
    if (n > 0) {
      kernels.launch("st_dropout").l(a.address()).i(code(a)).l(b.address()).i(code(b)).l(n).f(p).f(s).l(seed)
          .l(offset).run(grid(n), BLOCK, compute);
    }
  }

  // ---------------------------------------------------------------- losses

  @Override
  public void softmaxCrossEntropy(Tensor logits, Tensor labels, Tensor losses, Tensor dlogits,
      float gradScale) {
    enter();
    Shape.checkLogits(logits, labels, "softmaxCrossEntropy");
    CudaTensor z = fl(logits);
    CudaTensor y = in(labels);
    CudaTensor l = fl(losses);
    noteWritten(l);
    sameSize(labels, losses, "softmaxCrossEntropy (losses)");
    CudaTensor dz = dlogits == null ? null : fl(dlogits);
    if (dz != null) {
      sameSize(logits, dlogits, "softmaxCrossEntropy (dlogits)");
    }
    long rows = logits.dim(0);
    long cols = logits.dim(1);
    if (rows > 0) {
      kernels.launch("st_softmax_xent").l(z.address()).i(code(z)).l(y.address()).l(l.address()).i(code(l))
          .l(dz == null ? 0 : dz.address()).i(dz == null ? 0 : code(dz)).l(rows).l(cols).f(gradScale)
          .run(rowGrid(rows), ROW_WARPS * 32, compute);
    }
  }

  @Override
  public void mse(Tensor pred, Tensor target, Tensor losses, Tensor dpred, float gradScale) {
    enter();
    sameSize(pred, target, "mse");
    CudaTensor p = fl(pred);
    CudaTensor tt = fl(target);
    CudaTensor l = fl(losses);
    noteWritten(l);
    CudaTensor dp = dpred == null ? null : fl(dpred);
    long rows = pred.dim(0);
    long cols = Shape.rowSize(pred.shape());
    if (l.numel() != rows) {
      throw new IllegalArgumentException("mse: losses must have one element per row, got " + losses);
    }
    if (dp != null) {
      sameSize(pred, dpred, "mse (dpred)");
    }
    if (rows > 0) {
      kernels.launch("st_mse").l(p.address()).i(code(p)).l(tt.address()).i(code(tt)).l(l.address()).i(code(l))
          .l(dp == null ? 0 : dp.address()).i(dp == null ? 0 : code(dp)).l(rows).l(cols).f(gradScale)
          .run(grid(rows), BLOCK, compute);
    }
  }

  @Override
  public void countCorrect(Tensor logits, Tensor labels, Tensor correct) {
    enter();
    Shape.checkLogits(logits, labels, "countCorrect");
    CudaTensor z = fl(logits);
    CudaTensor y = in(labels);
    CudaTensor c = f32(fl(correct), "countCorrect (counter)");
    noteWritten(c);
    long rows = logits.dim(0);
    if (rows > 0 && logits.dim(1) > 0) {
      kernels.launch("st_count_correct").l(z.address()).i(code(z)).l(y.address()).l(c.address()).l(rows)
          .l(logits.dim(1)).run(rowGrid(rows), ROW_WARPS * 32, compute);
    }
  }

  @Override
  public void argmax(Tensor logits, Tensor out) {
    enter();
    Shape.checkLogits(logits, out, "argmax");
    CudaTensor z = fl(logits);
    CudaTensor o = in(out);
    noteWritten(o);
    long rows = logits.dim(0);
    if (rows > 0 && logits.dim(1) > 0) {
      kernels.launch("st_argmax").l(z.address()).i(code(z)).l(o.address()).l(rows).l(logits.dim(1))
          .run(grid(rows), BLOCK, compute);
    }
  }

  @Override
  public void softmax(Tensor logits, Tensor probs) {
    enter();
    sameSize(logits, probs, "softmax");
    CudaTensor z = fl(logits);
    CudaTensor p = fl(probs);
    noteWritten(p);
    long rows = logits.dim(0);
    long cols = Shape.rowSize(logits.shape());
    if (rows > 0) {
      kernels.launch("st_softmax").l(z.address()).i(code(z)).l(p.address()).i(code(p)).l(rows).l(cols)
          .run(rowGrid(rows), ROW_WARPS * 32, compute);
    }
  }

  // ---------------------------------------------------------------- optimizers

  @Override
  public void sgdStep(Tensor params, Tensor grads, Tensor momentumBuf, float lr, float momentum,
      boolean nesterov, float weightDecay, boolean firstStep) {
    sgdStep(params, GradientSlices.of(grads, 1), momentumBuf, lr, momentum, nesterov, weightDecay, firstStep);
  }

  @Override
  public void adamwStep(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2,
      float eps, float weightDecay, long step) {
    adamwStep(params, GradientSlices.of(grads, 1), m, v, lr, beta1, beta2, eps, weightDecay, step);
  }

  /** Note [summed gradient slices] (optim.cuh): the slices are read, and summed, in the update's pass. */
  private static void checkSlices(Tensor params, GradientSlices grads, String op) {
    if (grads.sliceSize() != params.numel()) {
      throw new IllegalArgumentException(op + ": the gradients must hold " + grads.ways() + " slices of the "
          + params.numel() + " parameters, got " + grads.slices());
    }
  }

  /** The slice read apart from the others (Note [summed gradient slices]), or null when there is none. */
  private CudaTensor ownSlice(GradientSlices grads) {
    return grads.ownSlice() == null ? null : fl(grads.ownSlice());
  }

  /** Appends the slices' stride, count, own slice and its index: the kernels' last four arguments. */
  private static void sliceArgs(Kernels.Launch k, long n, GradientSlices grads, CudaTensor own) {
    k.l(n).i(grads.ways()).l(own == null ? 0 : own.address()).i(grads.own());
  }

  @Override
  public void sgdStep(Tensor params, GradientSlices grads, Tensor momentumBuf, float lr, float momentum,
      boolean nesterov, float weightDecay, boolean firstStep) {
    enter();
    checkSlices(params, grads, "sgdStep");
    CudaTensor p = f32(fl(params), "sgdStep (params)");
    CudaTensor g = fl(grads.slices());
    CudaTensor own = ownSlice(grads);
    CudaTensor b = null;
    if (momentum != 0f) {
      b = f32(fl(momentumBuf), "sgdStep (momentum)");
      sameSize(params, momentumBuf, "sgdStep");
    }
    long n = p.numel();
    long mirrorAt = mirrorAddressOf(p); // the whole source, or a slice of it (Note [sharded optimizer])
    boolean mirrored = mirrorAt != 0;
    noteWritten(p);
    if (n > 0) {
      int gAlign = g.dtype() == DType.BFLOAT16 ? 8 : 16;
      boolean vec = mirrored && n % 4 == 0 && p.address() % 16 == 0 && g.address() % gAlign == 0
          && (own == null || own.address() % gAlign == 0) && (b == null || b.address() % 16 == 0)
          && mirrorAt % 8 == 0; // n % 4 == 0 also keeps every slice aligned
      Kernels.Launch k = kernels.launch(vec ? "st_sgd_m4" : mirrored ? "st_sgd_m" : "st_sgd").l(p.address()).l(g.address()).i(code(g))
          .l(b == null ? 0 : b.address()).l(n).f(lr).f(momentum).i(nesterov ? 1 : 0).f(weightDecay)
          .i(firstStep ? 1 : 0);
      if (mirrored) {
        k.l(mirrorAt);
      }
      sliceArgs(k, n, grads, own);
      k.run(grid(vec ? n / 4 : n), BLOCK, compute);
    }
    if (isMirrorSource(p)) {
      mirrorFresh = true; // Note [bf16 mirror of the parameters]: written in the same pass
    }
    if (b != null) {
      noteWritten(b);
    }
  }

  @Override
  public void adamwStep(Tensor params, GradientSlices grads, Tensor m, Tensor v, float lr, float beta1,
      float beta2, float eps, float weightDecay, long step) {
    enter();
    checkSlices(params, grads, "adamwStep");
    sameSize(params, m, "adamwStep");
    sameSize(params, v, "adamwStep");
    CudaTensor p = f32(fl(params), "adamwStep (params)");
    CudaTensor g = fl(grads.slices());
    CudaTensor own = ownSlice(grads);
    CudaTensor cm = f32(fl(m), "adamwStep (m)");
    CudaTensor cv = f32(fl(v), "adamwStep (v)");
    // Bias corrections in double, rounded to float, exactly as CpuDevice.
    float bc1 = 1f - (float) Math.pow(beta1, step);
    float bc2 = 1f - (float) Math.pow(beta2, step);
    long n = p.numel();
    long mirrorAt = mirrorAddressOf(p); // the whole source, or a slice of it (Note [sharded optimizer])
    boolean mirrored = mirrorAt != 0;
    noteWritten(p);
    noteWritten(cm);
    noteWritten(cv);
    if (n > 0) {
      Kernels.Launch k = kernels.launch(mirrored ? "st_adamw_m" : "st_adamw").l(p.address()).l(g.address()).i(code(g))
          .l(cm.address()).l(cv.address()).l(n).f(lr).f(beta1).f(beta2).f(eps).f(weightDecay).f(bc1).f(bc2);
      if (mirrored) {
        k.l(mirrorAt);
      }
      sliceArgs(k, n, grads, own);
      k.run(grid(n), BLOCK, compute);
    }
    if (isMirrorSource(p)) {
      mirrorFresh = true;
    }
  }

  @Override
  public void sumSlices(GradientSlices src, Tensor dst) {
    enter();
    CudaTensor s = fl(src.slices());
    CudaTensor own = ownSlice(src);
    CudaTensor d = fl(dst);
    long n = d.numel();
    if (src.sliceSize() != n || s.dtype() != d.dtype()) {
      throw new IllegalArgumentException("sumSlices: src must hold " + src.ways() + " slices of dst's " + n
          + " elements and dtype, got " + src.slices() + " and " + dst);
    }
    noteWritten(d);
    if (n > 0) {
      int align = d.dtype() == DType.BFLOAT16 ? 8 : 16;
      boolean vec = n % 4 == 0 && s.address() % align == 0 && d.address() % align == 0
          && (own == null || own.address() % align == 0);
      kernels.launch("st_sum_slices").l(s.address()).l(d.address()).i(code(d)).l(n).i(src.ways()).i(vec ? 1 : 0)
          .l(own == null ? 0 : own.address()).i(src.own())
          .run(grid(vec ? n / 4 : n), BLOCK, compute);
    }
  }

  // ---------------------------------------------------------------- synchronised batch norm (bn_sync.cuh)
  // Note [synchronised batch norm] in BatchNorm2d: the training forward and backward split where the layer
  // all-reduces per-channel sums. The reductions are deterministic (a fixed share per thread, added in a fixed
  // order, no atomics; bn_sync.cuh says how per layout); the per-channel and elementwise passes mirror
  // CpuConv's arithmetic (fmad off), so they give the CPU engine's bits for the same inputs. Activations may
  // be channels-last (Note [channels-last tensors]): y and dx take x's layout.

  /** Threads per block of the NCHW per-channel reductions (one block per channel). */
  private static final int BN_BLOCK = 512;
  private static final int BN_THREADS = 256; // bn_sync.cuh: threads per block of the NHWC passes
  private CudaBuffer bnPartials; // (chunks, C, 2) doubles of the NHWC reduction, grown on demand

  /** (N, C, values per sample and channel) of an (N, C, spatial...) activation. */
  private static long[] bnShape(Tensor x, String op) {
    if (x.rank() < 2) {
      throw new IllegalArgumentException(op + " expects (N, C, spatial...), got " + x);
    }
    long n = x.dim(0);
    long c = x.dim(1);
    return new long[] {n, c, n * c == 0 ? 0 : x.numel() / (n * c)};
  }

  /** x and the tensors that must match it: one shape, all FLOAT32 or all BFLOAT16. */
  private CudaTensor bnActivation(Tensor x, String op, Tensor... same) {
    CudaTensor cx = fl(x);
    CudaTensor[] all = new CudaTensor[same.length + 1];
    all[0] = cx;
    for (int k = 0; k < same.length; k++) {
      all[k + 1] = fl(same[k]);
      if (!java.util.Arrays.equals(x.shape(), same[k].shape())) {
        throw new IllegalArgumentException(op + ": " + same[k] + " must have the shape of x " + x);
      }
    }
    activations(op, all);
    return cx;
  }

  /**
   * Per channel [sum, sum] over x's N * spatial values, by mode (bn_sync.cuh's bn_terms): 0 [x, x^2]; 1 [dy,
   * dy * xhat] with mean and invStd; 2 as 1 through a fused ReLU (gamma and beta give the forward's output);
   * 3 [dy, 0]. Written to out (2C) when not null, added to acc0 (C) and acc1 (C) when not null. Both layouts
   * reduce into (chunk, channel) partials, then add the chunks in order (deterministic).
   */
  private void bnReduce(int mode, CudaTensor x, CudaTensor dy, CudaTensor mean, CudaTensor invStd, CudaTensor gamma,
      CudaTensor beta, CudaTensor out, CudaTensor acc0, CudaTensor acc1, long[] s, int layout) {
    long c = s[1];
    if (c == 0) {
      return;
    }
    CudaTensor in = x != null ? x : dy;
    boolean vec = vec8(layout == NHWC ? c : s[2], x, dy);
    long xAddr = x == null ? 0 : x.address();
    int xCode = x == null ? 0 : code(x);
    long dyAddr = dy == null ? 0 : dy.address();
    int dyCode = dy == null ? 0 : code(dy);
    long rows = s[0] * s[2];
    long chunks;
    long perChunk;
    if (layout != NHWC) {
      // Blocks of (channel, chunk of samples): enough chunks for ~4 blocks per SM, each chunk >= 1 sample.
      long want = Math.max(1, Math.min(s[0], (4L * smCount + c - 1) / c));
      perChunk = (s[0] + want - 1) / want;
      chunks = Math.max(1, (s[0] + perChunk - 1) / perChunk);
    } else {
      long[] t = nhwcTiles(c, vec);
      long want = Math.max(1, Math.min((rows + 4 * t[1] - 1) / (4 * t[1]), (4L * smCount + t[0] - 1) / t[0]));
      perChunk = Math.max(1, (rows + want - 1) / want);
      chunks = Math.max(1, (rows + perChunk - 1) / perChunk);
    }
    if (chunks > 65535) {
      throw new IllegalArgumentException("batch norm reduction over " + in + ": too many chunks (" + chunks + ")");
    }
    long need = chunks * c * 2 * 8;
    if (bnPartials == null || bnPartials.bytes() < need) {
      if (bnPartials != null) {
        compute.synchronize(); // queued reductions may still read the old buffer
        bnPartials.close();
      }
      bnPartials = arena.allocate(Math.max(need, 64L << 10), "batch norm partials");
    }
    long[] p = {mean == null ? 0 : mean.address(), invStd == null ? 0 : invStd.address(),
        gamma == null ? 0 : gamma.address(), beta == null ? 0 : beta.address()};
    if (layout != NHWC) {
      int block = s[2] >= 512 ? BN_BLOCK : s[2] >= 256 ? 256 : 128;
      kernels.launch("st_bn_partials_nchw").i(mode).l(xAddr).i(xCode).l(dyAddr).i(dyCode).l(p[0]).l(p[1]).l(p[2])
          .l(p[3]).l(bnPartials.address()).l(s[0]).l(c).l(s[2]).l(perChunk).i(vec ? 1 : 0)
          .run2d(Math.toIntExact(c), Math.toIntExact(chunks), block, 1, compute);
    } else {
      Kernels.Launch l = mode == 0 || mode == 3 // one-tensor sums: their own, lighter kernel
          ? kernels.launch("st_bn_sums_nhwc").i(mode).l(xAddr).i(xCode).l(dyAddr).i(dyCode)
          : kernels.launch("st_bn_partials_nhwc").i(mode).l(xAddr).i(xCode).l(dyAddr).i(dyCode).l(p[0]).l(p[1])
              .l(p[2]).l(p[3]);
      l.l(bnPartials.address()).l(rows).l(c).l(perChunk).i(vec ? 1 : 0)
          .run2d(Math.toIntExact(nhwcTiles(c, vec)[0]), Math.toIntExact(chunks), BN_THREADS, 1, compute);
    }
    kernels.launch("st_bn_partials_final").l(bnPartials.address()).l(chunks).l(c)
        .l(out == null ? 0 : out.address()).l(acc0 == null ? 0 : acc0.address()).l(acc1 == null ? 0 : acc1.address())
        .run(grid(32L * c), BLOCK, compute); // a warp per channel
  }

  /**
   * bn_sync.cuh's NHWC thread layout for c channels: {channel tiles, rows per block at a time}; groups of 8
   * channels per thread when vectorised, else 1, up to 256 groups per block.
   */
  private static long[] nhwcTiles(long c, boolean vec) {
    long groups = vec ? c / 8 : c;
    long perBlock = Math.min(groups, BN_THREADS);
    return new long[] {(groups + perBlock - 1) / perBlock, BN_THREADS / perBlock};
  }

  /**
   * Launches a per-channel elementwise kernel (bn_sync.cuh's per_channel) over (n, c, hw), adding its last
   * argument, vec: vectorised when the tensors allow it (planes (NCHW) or channels (NHWC) a multiple of 8, aligned
   * addresses). NCHW: a grid of (planes, parts of a plane), ~2 iterations per thread; NHWC: blocks of 256 threads
   * as the reduction's, ~4 rows per thread.
   */
  private void perChannelLaunch(Kernels.Launch launch, long[] s, int layout, CudaTensor... tensors) {
    long n = s[0];
    long c = s[1];
    long hw = s[2];
    if (n * c * hw == 0) {
      return;
    }
    boolean vec = vec8(layout == NHWC ? c : hw, tensors);
    launch.i(vec ? 1 : 0);
    int per = vec ? 8 : 1;
    if (layout != NHWC) {
      if (n * c > Integer.MAX_VALUE) {
        throw new IllegalArgumentException("per-channel op over " + n * c + " planes: more than the grid holds");
      }
      long items = hw / per;
      int block = items >= 256 ? 256 : items >= 128 ? 128 : items >= 64 ? 64 : 32;
      long parts = Math.min(65535, Math.max(1, (items + 2L * block - 1) / (2L * block)));
      launch.run2d(Math.toIntExact(n * c), Math.toIntExact(parts), block, 1, compute);
    } else {
      long[] t = nhwcTiles(c, vec);
      long rows = n * hw;
      long gy = Math.min(65535, Math.max(1, (rows + 4L * t[1] - 1) / (4L * t[1])));
      launch.run2d(Math.toIntExact(t[0]), Math.toIntExact(gy), BN_THREADS, 1, compute);
    }
  }

  /** Per-call (2C) float scratch for the per-rank batch norm's statistics and backward sums. */
  private CudaTensor bnSums(long c) {
    if (bnSums == null || bnSums.numel() < 2 * c) {
      if (bnSums != null) {
        compute.synchronize(); // queued kernels may still read the old buffer
        bnSums.buffer().close();
      }
      bnSums = allocate(DType.FLOAT32, Math.toIntExact(Math.max(2 * c, 4096)));
    }
    return bnSums;
  }

  private CudaTensor bnSums; // see bnSums(long)

  @Override
  public void batchNormStats(Tensor x, Tensor stats) {
    enter();
    String op = "batchNormStats";
    CudaTensor cx = bnActivation(x, op);
    long[] s = bnShape(x, op);
    CudaTensor st = perChannel(x, fl(stats), Math.toIntExact(2 * s[1]), "stats", op);
    noteWritten(st);
    bnReduce(0, cx, null, null, null, null, null, st, null, null, s, layoutOf(op, cx));
  }

  @Override
  public void batchNormFinalizeStats(Tensor stats, long count, float momentum, float eps, Tensor mean,
      Tensor invStd, Tensor runningMean, Tensor runningVar) {
    enter();
    String op = "batchNormFinalizeStats";
    int c = mean.size();
    Shape.checkBatchNormFinalize(count, runningMean, runningVar, op);
    CudaTensor st = perChannel(stats, fl(stats), 2 * c, "stats", op);
    CudaTensor m = perChannel(stats, fl(mean), c, "mean", op);
    CudaTensor is = perChannel(stats, fl(invStd), c, "invStd", op);
    CudaTensor rm = runningMean == null ? null : perChannel(stats, fl(runningMean), c, "runningMean", op);
    CudaTensor rv = runningVar == null ? null : perChannel(stats, fl(runningVar), c, "runningVar", op);
    for (CudaTensor o : new CudaTensor[] {m, is, rm, rv}) {
      if (o != null) {
        noteWritten(o);
      }
    }
    if (c > 0) {
      kernels.launch("st_bn_finalize").l(st.address()).l(c).l(count).f(momentum).f(eps).l(m.address())
          .l(is.address()).l(rm == null ? 0 : rm.address()).l(rv == null ? 0 : rv.address())
          .run(grid(c), BLOCK, compute);
    }
  }

  @Override
  public void batchNormApply(Tensor x, Tensor gamma, Tensor beta, Tensor mean, Tensor invStd, Tensor y) {
    enter();
    String op = "batchNormApply";
    CudaTensor cx = bnActivation(x, op, y);
    CudaTensor cy = fl(y);
    long[] s = bnShape(x, op);
    int c = Math.toIntExact(s[1]);
    CudaTensor g = perChannel(x, fl(gamma), c, "gamma", op);
    CudaTensor b = perChannel(x, fl(beta), c, "beta", op);
    CudaTensor m = perChannel(x, fl(mean), c, "mean", op);
    CudaTensor is = perChannel(x, fl(invStd), c, "invStd", op);
    int layout = layoutOf(op, cx);
    noteWritten(cy);
    adopt(cy, layout);
    bnApply(cx, cy, g, b, m, is, s, layout, false);
  }

  /** y = gamma (x - mean) invStd + beta per channel, then max(y, 0) when relu (bn_sync.cuh's st_bn_apply). */
  private void bnApply(CudaTensor x, CudaTensor y, CudaTensor gamma, CudaTensor beta, CudaTensor mean,
      CudaTensor invStd, long[] s, int layout, boolean relu) {
    perChannelLaunch(kernels.launch("st_bn_apply").l(x.address()).i(code(x)).l(y.address()).i(code(y))
        .l(gamma.address()).l(beta.address()).l(mean.address()).l(invStd.address()).l(s[0]).l(s[1]).l(s[2])
        .i(layout).i(relu ? 1 : 0), s, layout, x, y);
  }

  /**
   * dx from dy and the [sum_dy, sum_dy_xhat] sums over count values (bn_sync.cuh's st_bn_bwd_apply); through the
   * fused ReLU when beta is given.
   */
  private void bnBackwardApply(CudaTensor x, CudaTensor dy, CudaTensor gamma, CudaTensor beta, CudaTensor mean,
      CudaTensor invStd, CudaTensor sums, long count, CudaTensor dx, long[] s, int layout) {
    perChannelLaunch(kernels.launch("st_bn_bwd_apply").l(x.address()).i(code(x)).l(dy.address()).i(code(dy))
        .l(gamma.address()).l(beta == null ? 0L : beta.address()).l(mean.address()).l(invStd.address())
        .l(sums.address()).f((float) count).l(dx.address()).i(code(dx)).l(s[0]).l(s[1]).l(s[2]).i(layout)
        .i(beta != null ? 1 : 0), s, layout, x, dy, dx);
  }

  @Override
  public void batchNormBackwardReduce(Tensor x, Tensor dy, Tensor mean, Tensor invStd, Tensor sums) {
    enter();
    String op = "batchNormBackwardReduce";
    CudaTensor cx = bnActivation(x, op, dy);
    CudaTensor cdy = fl(dy);
    long[] s = bnShape(x, op);
    int c = Math.toIntExact(s[1]);
    CudaTensor m = perChannel(x, fl(mean), c, "mean", op);
    CudaTensor is = perChannel(x, fl(invStd), c, "invStd", op);
    CudaTensor sm = perChannel(x, fl(sums), 2 * c, "sums", op);
    noteWritten(sm);
    bnReduce(1, cx, cdy, m, is, null, null, sm, null, null, s, layoutOf(op, cx, cdy));
  }

  @Override
  public void batchNormBackwardApply(Tensor x, Tensor dy, Tensor gamma, Tensor mean, Tensor invStd, Tensor sums,
      long count, Tensor dx) {
    enter();
    String op = "batchNormBackwardApply";
    CudaTensor cx = bnActivation(x, op, dy, dx);
    CudaTensor cdy = fl(dy);
    CudaTensor cdx = fl(dx);
    long[] s = bnShape(x, op);
    int c = Math.toIntExact(s[1]);
    if (count <= 0) {
      throw new IllegalArgumentException(op + ": count must be > 0, got " + count);
    }
    CudaTensor g = perChannel(x, fl(gamma), c, "gamma", op);
    CudaTensor m = perChannel(x, fl(mean), c, "mean", op);
    CudaTensor is = perChannel(x, fl(invStd), c, "invStd", op);
    CudaTensor sm = perChannel(x, fl(sums), 2 * c, "sums", op);
    int layout = layoutOf(op, cx, cdy);
    noteWritten(cdx);
    adopt(cdx, layout);
    bnBackwardApply(cx, cdy, g, null, m, is, sm, count, cdx, s, layout);
  }

  // ---------------------------------------------------------------- convolutional layers (cuDNN)
  // Note [cuDNN layers]: channels-first (N, C, H, W) tensors, FLOAT32 or BFLOAT16 activations (one dtype per
  // call), FLOAT32 per-channel parameters, statistics and gradients (Device's dtype contract). cuDNN picks the
  // algorithms (deterministic for the backward passes) within a workspace limit, once per shape (Note [cuDNN
  // ops] in sparktrainer_jni.cpp); the workspace itself grows to what the chosen ones need (Note [cuDNN
  // workspace]). fp32 convolutions run without TF32 unless Options.tf32 is on, so they match the CPU engine to
  // rounding; bf16 ones use the tensor cores with fp32 accumulation.

  /**
   * The cuDNN workspace limit in bytes: -Dsparktrainer.cudnn.workspaceMiB (default 512). Convolution algorithms
   * are chosen among those that need at most this much; the buffer only grows to what the chosen ones need (Note
   * [cuDNN workspace]).
   */
  static final long CUDNN_WORKSPACE_BYTES = Long.getLong("sparktrainer.cudnn.workspaceMiB", 512L) << 20;
  /**
   * -Dsparktrainer.cudnn.benchmark=true: choose convolution algorithms by timing them once per shape (as PyTorch's
   * torch.backends.cudnn.benchmark with cudnn.deterministic off), fastest first, deterministic or not, so two runs
   * may differ in the last bits; default false: cuDNN's heuristics and deterministic backward algorithms, the same
   * algorithms on every run, so a seed gives the same bits.
   */
  static final int CUDNN_SEARCH = Boolean.getBoolean("sparktrainer.cudnn.benchmark") ? 1 : 0;
  private static final int NCHW = 0;
  private static final int NHWC = 1;

  // Note [channels-last tensors]: a 4-D activation may be stored NHWC (CudaTensor.channelsLast), the layout
  // cuDNN's bf16 tensor-core kernels and batch norm are fastest in (PyTorch's channels_last). Its logical shape
  // stays (N, C, H, W), so layers and the CPU engine see the same shapes. The layout travels with the data: the
  // convolution, pooling and batch-norm ops take it from their inputs and mark their outputs; elementwise ops
  // (copy, axpy, ReLU, dropout) mark their output like their input. Tensors whose H * W is 1 are the same bytes
  // in both layouts and mix freely; any other mix throws (convert with convertLayout), as does reshaping: a
  // view is always row-major, so Flatten converts first. Conv filters follow the activations: NHWC
  // activations need an NHWC filter (K, kh, kw, C), which the layer converts from its parameter each step;
  // the fp32 filter gradient stays (K, C, kh, kw) (the op converts cuDNN's NHWC result while adding it).

  /**
   * The bf16 path keeps conv activations channels-last (NHWC, as PyTorch's channels_last) unless
   * -Dsparktrainer.cuda.channelsLast=false. Every op agrees with its channels-first run (CudaChannelsLastTest).
   * Measured on an H100 (ResNet-50, batch 256, bf16, docs/gpu.md): channels-first 2,069 img/s, channels-last 2,966
   * img/s with the project's batch-norm kernels (Note [fused batch norm + ReLU]); with cuDNN's legacy NHWC batch
   * norm it had been 314 img/s.
   */
  @Override
  public boolean supportsChannelsLast() {
    return !"false".equalsIgnoreCase(System.getProperty("sparktrainer.cuda.channelsLast"));
  }

  private static int layout(CudaTensor t) {
    return t.rank() == 4 && t.channelsLast() ? NHWC : NCHW;
  }

  /** True when both layouts of t are the same bytes (not 4-D, or H * W == 1). */
  private static boolean layoutFree(CudaTensor t) {
    return t.rank() != 4 || (long) t.dim(2) * t.dim(3) == 1;
  }

  private static String layoutName(int layout) {
    return layout == NHWC ? "channels-last (NHWC)" : "channels-first (NCHW)";
  }

  /** The layout of {@code main}; every other tensor must have it too (or be layout-free). */
  private static int layoutOf(String op, CudaTensor main, CudaTensor... others) {
    int l = layout(main);
    for (CudaTensor o : others) {
      if (o != null && layout(o) != l && !layoutFree(o)) {
        throw new IllegalArgumentException(op + ": " + main + " is " + layoutName(l) + " but " + o + " is "
            + layoutName(layout(o)) + "; convert one with convertLayout");
      }
    }
    return l;
  }

  private static void adopt(CudaTensor out, int layout) {
    if (out.rank() == 4) {
      out.setChannelsLast(layout == NHWC);
    }
  }

  /** dst, written elementwise from src, takes src's layout (a channels-last src must keep its shape). */
  private static void adoptLayout(String op, CudaTensor src, CudaTensor dst) {
    if (layout(src) == NHWC && !layoutFree(src) && !java.util.Arrays.equals(src.shape(), dst.shape())) {
      throw new IllegalArgumentException(op + ": " + src + " is channels-last and " + dst + " has another shape;"
          + " convert it with convertLayout first (Note [channels-last tensors])");
    }
    adopt(dst, layout(src));
  }

  /** y += x elementwise: both in one layout. */
  private static void sameLayout(String op, CudaTensor a, CudaTensor b) {
    if (layout(a) != layout(b) && !layoutFree(a) && !layoutFree(b)) {
      throw new IllegalArgumentException(op + ": " + a + " is " + layoutName(layout(a)) + " but " + b + " is "
          + layoutName(layout(b)) + "; convert one with convertLayout");
    }
  }

  @Override
  public void markChannelsLast(Tensor x, boolean on) {
    adopt(t(x), on ? NHWC : NCHW);
  }

  @Override
  public void convertLayout(Tensor src, Tensor dst, boolean toChannelsLast, boolean accumulate) {
    enter();
    CudaTensor s = fl(src);
    CudaTensor d = fl(dst);
    check4d(src, "convertLayout");
    if (!java.util.Arrays.equals(src.shape(), dst.shape())) {
      throw new IllegalArgumentException("convertLayout: " + src + " and " + dst + " must have one (N, C, H, W) shape");
    }
    noteWritten(d);
    int from = layout(s);
    int to = toChannelsLast ? NHWC : NCHW;
    long n = s.numel();
    if (n > 0) {
      kernels.launch("st_layout_convert").l(s.address()).i(code(s)).l(d.address()).i(code(d)).l(src.dim(0))
          .l(src.dim(1)).l((long) src.dim(2) * src.dim(3)).i(from == to ? -1 : to).i(accumulate ? 1 : 0)
          .run(grid(n), BLOCK, compute);
    }
    adopt(d, to);
  }
  // Note [cuDNN workspace]: cuDNN chooses each convolution's algorithm (engine plan) among those that need at most
  // CUDNN_WORKSPACE_BYTES of workspace and caches it per shape (Note [cuDNN ops] in sparktrainer_jni.cpp), but the
  // buffer is only as large as the most that the chosen algorithms have needed so far, rounded up to 1 MiB, and
  // there is none while none needs any. (A fixed 512 MiB buffer was most of the Fashion-MNIST CNN's 0.65 GiB
  // peak, against PyTorch's 0.41 GiB.) The native calls get the limit and the buffer apart: the limit chooses (it
  // is part of the plan's key), so the algorithms, and the bits, are those of a buffer of the limit's size. When the
  // algorithm in use needs more than the buffer, the call runs nothing and answers CUDNN_WORKSPACE_TOO_SMALL with
  // the bytes; the buffer grows and the call is repeated. Growing first waits for the compute stream (cuDNN's
  // handle is bound to it, so the convolutions queued so far are the only users of the old buffer), then frees
  // the old buffer and allocates the new one (never both at once). It is an allocation, so it is refused while a
  // CUDA graph is captured (GraphCaptureException; the trainer's eager warm-up steps meet every shape first), and
  // freeing the old buffer makes graphs captured before stale (they point at it; CudaGraph.freesAtCapture).
  // Timed choice (sparktrainer.cudnn.benchmark) on the graph API runs the candidates on the workspace: when they
  // need more than the buffer (the largest candidate's need, plus the output's size when the call accumulates),
  // the call answers CUDNN_TRIAL_WORKSPACE and a trial buffer that large is allocated for that one call and freed
  // after it, as PyTorch's benchmark allocates one for its trials; the buffer then grows to the chosen plan's need.
  // No graph can point at a trial buffer (it lives inside one call, and nothing is allocated during a capture), so
  // freeing it leaves the graphs replayable.
  private volatile CudaBuffer cudnnWorkspace; // null until a chosen algorithm needs workspace
  private volatile long cudnnWorkspaceNeed; // the most workspace a chosen algorithm has needed, bytes
  private final java.util.Map<String, CudaTensor> convScratch = new java.util.HashMap<>();

  /** Bytes of the cuDNN workspace now (0 while none is allocated); Note [cuDNN workspace]. */
  public long cudnnWorkspaceBytes() {
    CudaBuffer ws = cudnnWorkspace;
    return ws == null ? 0 : ws.bytes();
  }

  /** The most workspace, in bytes, that the convolution algorithms this device ran have needed. */
  long cudnnWorkspaceNeed() {
    return cudnnWorkspaceNeed;
  }

  /**
   * A library workspace buffer's size for a need of {@code need} bytes under {@code limit} (the cuDNN one here and
   * BlasLt's, Note [cuBLASLt workspace]): none for none, else the need rounded up to 1 MiB (so that needs a little
   * apart share one size), but not beyond the limit.
   */
  static long workspaceSize(long need, long limit) {
    if (need <= 0) {
      return 0;
    }
    long mib = 1L << 20;
    long rounded = need > Long.MAX_VALUE - mib ? need : (need + mib - 1) / mib * mib;
    return Math.max(need, Math.min(rounded, limit));
  }

  /**
   * Makes the cuDNN workspace at least {@code need} bytes (Note [cuDNN workspace]): waits for the compute stream,
   * frees the old buffer and allocates one of workspaceSize(need). Refused during a CUDA graph capture.
   */
  synchronized void growCudnnWorkspace(long need) {
    CudaBuffer old = cudnnWorkspace;
    if (need <= (old == null ? 0 : old.bytes())) {
      return;
    }
    long size = workspaceSize(need, CUDNN_WORKSPACE_BYTES);
    checkNotCapturing("growing the cuDNN workspace to " + size + " bytes");
    if (old != null) {
      compute.synchronize(); // queued convolutions may still use the old buffer
      cudnnWorkspace = null;
      old.close();
    }
    cudnnWorkspace = arena.allocate(size, "cuDNN workspace");
    LOG.log(System.Logger.Level.DEBUG, "{0}: cuDNN workspace now {1} bytes (limit {2})", name, size,
        CUDNN_WORKSPACE_BYTES);
  }

  /** The activation dtype shared by {@code ts} (FLOAT32 or BFLOAT16), else IllegalArgumentException. */
  private static DType activations(String op, CudaTensor... ts) {
    DType d = ts[0].dtype();
    for (CudaTensor c : ts) {
      if (c.dtype() != d || (d != DType.FLOAT32 && d != DType.BFLOAT16)) {
        StringBuilder b = new StringBuilder();
        for (CudaTensor x : ts) {
          b.append(b.length() == 0 ? "" : ", ").append(x);
        }
        throw new IllegalArgumentException(op + ": activations must all be FLOAT32 or all BFLOAT16, got " + b);
      }
    }
    return d;
  }

  private static CudaTensor perChannel(Tensor x, CudaTensor c, int channels, String what, String op) {
    if (c.dtype() != DType.FLOAT32 || c.numel() != channels) {
      throw new IllegalArgumentException(op + ": " + what + " must be a FLOAT32 tensor of " + channels
          + " elements (one per channel), got " + c + " for input " + x);
    }
    return c;
  }

  /** Throws for a non-zero cuDNN status; the message is built only then (these calls run hundreds of times a step). */
  private static void dnn(int status, java.util.function.Supplier<String> what) {
    if (status != 0) {
      Native.check(status, what.get());
    }
  }

  private int computeMode(DType d) {
    return d == DType.BFLOAT16 ? 2 : options.tf32() ? 1 : 0;
  }

  private static int[] convDims(int[] x, int[] w, int[] y, Conv2dDesc d) {
    return new int[] {x[0], x[1], x[2], x[3], w[0], w[2], w[3], d.padH(), d.padW(), d.strideH(), d.strideW(),
        d.dilationH(), d.dilationW(), d.groups(), y[2], y[3]};
  }

  private static String convWhat(String op, int[] x, int[] w, int[] y, Conv2dDesc d, DType t) {
    return op + " (x " + Shape.str(x) + ", w " + Shape.str(w) + ", y " + Shape.str(y) + ", " + d + ", " + t + ")";
  }

  private static void check4d(Tensor x, String op) {
    if (x.rank() != 4) {
      throw new IllegalArgumentException(op + " expects (N, C, H, W) tensors, got " + x);
    }
  }

  /**
   * -Dsparktrainer.cudnn.api: {@code graph} (the default) runs convolutions through cuDNN's backend (graph) API
   * with engine heuristics, or timed engine choice under sparktrainer.cudnn.benchmark (Note [cuDNN graph
   * convolutions]), which reaches the sm90 NHWC bf16 engines the legacy API does not; a shape the graph API has
   * no engine for runs on the legacy API (logged once per shape). {@code legacy} runs them all through cuDNN's
   * legacy entry points (Note [cuDNN ops] in sparktrainer_jni.cpp). Measured on an H100 (bf16, channels-last,
   * timed choice): ResNet-50's convolutions took 23 ms of a step on the graph API against 44 ms on the legacy one,
   * and the Fashion-MNIST CNN's step went from 2.6 to 1.2 ms (docs/gpu.md).
   */
  static final String CUDNN_API = System.getProperty("sparktrainer.cudnn.api", "graph");
  private static final int CONV_FORWARD = 0;
  private static final int CONV_BACKWARD_DATA = 1;
  private static final int CONV_BACKWARD_FILTER = 2;
  private boolean cudnnGraph = cudnnGraphApi(CUDNN_API);
  private int cudnnSearch = CUDNN_SEARCH;
  private final java.util.Set<String> cudnnGraphFallbacks = java.util.concurrent.ConcurrentHashMap.newKeySet();

  private static boolean cudnnGraphApi(String api) {
    return switch (api) {
      case "legacy" -> false;
      case "graph" -> true;
      default -> throw new IllegalArgumentException(
          "-Dsparktrainer.cudnn.api must be graph (the default) or legacy, got '" + api + "'");
    };
  }

  /** Switches this device's convolutions between the legacy and the graph API (tests run every case on both). */
  void useCudnnGraph(boolean graph) {
    cudnnGraph = graph;
  }

  /** Switches this device's algorithm choice between heuristics and timing (tests run both; CUDNN_SEARCH). */
  void useCudnnBenchmark(boolean timed) {
    cudnnSearch = timed ? 1 : 0;
  }

  /** The convolutions (as convWhat names them, plus the layout) that the graph API left to the legacy one. */
  java.util.Set<String> cudnnGraphFallbacks() {
    return java.util.Set.copyOf(cudnnGraphFallbacks);
  }

  /**
   * One cuDNN convolution direction, c = result + beta * c: CONV_FORWARD (a x, b w, c y), CONV_BACKWARD_DATA (a dy,
   * b w, c dx), CONV_BACKWARD_FILTER (a x, b dy, c dw), through this device's API (CUDNN_API); a failure throws
   * with what's text.
   */
  private void cudnnConv(int dir, DType d, int layout, int[] dims, long a, long b, long c, float beta,
      java.util.function.Supplier<String> what) {
    long h = cudnn().handle();
    int mode = computeMode(d);
    if (cudnnGraph) {
      int st = cudnnConvCall(true, dir, h, d, layout, dims, mode, a, b, c, beta);
      if (st != Native.NO_CUDNN_ENGINE) {
        dnn(st, () -> what.get() + " through the cuDNN graph API");
        return;
      }
      String shape = what.get() + (layout == NHWC ? ", NHWC" : "");
      if (cudnnGraphFallbacks.add(shape)) {
        LOG.log(System.Logger.Level.INFO, "{0}: no cuDNN graph engine for {1}; it runs on the legacy API", name,
            shape);
      }
    }
    dnn(cudnnConvCall(false, dir, h, d, layout, dims, mode, a, b, c, beta), what);
  }

  /**
   * One convolution through the graph or the legacy API, answering its workspace requests (Note [cuDNN
   * workspace]): grows the workspace, or lends a trial buffer for the call, and calls again. Returns the status of
   * the last call (a request that asks for no more than it was given is returned, and so thrown by dnn).
   */
  private int cudnnConvCall(boolean graph, int dir, long h, DType d, int layout, int[] dims, int mode, long a,
      long b, long c, float beta) {
    long[] need = new long[1];
    CudaBuffer trial = null;
    try {
      for (int attempt = 0; ; attempt++) {
        CudaBuffer ws = trial != null ? trial : cudnnWorkspace;
        long wsAddress = ws == null ? 0 : ws.address();
        long wsBytes = ws == null ? 0 : ws.bytes();
        need[0] = 0;
        int st = graph
            ? Native.cudnnGraphConv(h, dir, d.ordinal(), layout, dims, mode, cudnnSearch, a, b, c, beta, wsAddress,
                wsBytes, CUDNN_WORKSPACE_BYTES, need)
            : switch (dir) {
              case CONV_FORWARD -> Native.cudnnConvForward(h, d.ordinal(), layout, dims, mode, cudnnSearch, a, b, c,
                  beta, wsAddress, wsBytes, CUDNN_WORKSPACE_BYTES, need);
              case CONV_BACKWARD_DATA -> Native.cudnnConvBackwardData(h, d.ordinal(), layout, dims, mode,
                  cudnnSearch, a, b, c, beta, wsAddress, wsBytes, CUDNN_WORKSPACE_BYTES, need);
              default -> Native.cudnnConvBackwardFilter(h, d.ordinal(), layout, dims, mode, cudnnSearch, a, b, c,
                  beta, wsAddress, wsBytes, CUDNN_WORKSPACE_BYTES, need);
            };
        if (st == 0) {
          if (need[0] > cudnnWorkspaceNeed) {
            cudnnWorkspaceNeed = need[0];
          }
          if (trial != null) { // it ran on the trial buffer: the workspace takes the chosen plan's size now
            freeTrialWorkspace(trial);
            trial = null;
            growCudnnWorkspace(need[0]);
          }
          return 0;
        }
        boolean request = st == Native.CUDNN_WORKSPACE_TOO_SMALL || st == Native.CUDNN_TRIAL_WORKSPACE;
        if (!request || need[0] <= wsBytes || attempt >= 4) {
          return st;
        }
        if (trial != null) {
          freeTrialWorkspace(trial);
          trial = null;
        }
        if (st == Native.CUDNN_WORKSPACE_TOO_SMALL) {
          growCudnnWorkspace(need[0]);
        } else {
          checkNotCapturing("a cuDNN trial workspace of " + need[0] + " bytes");
          trial = arena.allocate(need[0], "cuDNN trial workspace");
        }
      }
    } finally {
      if (trial != null) {
        freeTrialWorkspace(trial);
      }
    }
  }

  /**
   * Frees a trial buffer of Note [cuDNN workspace] once the work queued on it is done. No CUDA graph can use it, so
   * the count of freed allocations that marks graphs stale stays as it was.
   */
  private void freeTrialWorkspace(CudaBuffer trial) {
    compute.synchronize(); // the trial runs and the convolution may still use it
    long frees = memoryFrees;
    trial.close();
    memoryFrees = frees;
  }

  @Override
  public void conv2dForward(Tensor x, Tensor w, Tensor bias, Tensor y, Conv2dDesc desc) {
    conv2dForward(x, w, bias, y, desc, false);
  }

  @Override
  public void conv2dForward(Tensor x, Tensor w, Tensor bias, Tensor y, Conv2dDesc desc, boolean relu) {
    enter();
    CudaTensor cx = fl(x);
    CudaTensor cw = fl(w);
    CudaTensor cy = fl(y);
    desc.check(x.shape(), w.shape(), y.shape(), "conv2dForward");
    DType d = activations("conv2dForward", cx, cw, cy);
    CudaTensor cb = bias == null ? null : perChannel(x, fl(bias), w.dim(0), "bias", "conv2dForward");
    int layout = layoutOf("conv2dForward", cx, cw);
    noteWritten(cy);
    adopt(cy, layout);
    if (x.dim(0) == 0) {
      return;
    }
    cudnnConv(CONV_FORWARD, d, layout, convDims(x.shape(), w.shape(), y.shape(), desc), cx.address(), cw.address(),
        cy.address(), 0f, () -> convWhat("cudnnConvolutionForward", x.shape(), w.shape(), y.shape(), desc, d));
    if (cb != null || relu) {
      long[] s = {y.dim(0), y.dim(1), (long) y.dim(2) * y.dim(3)};
      if (cb != null) {
        perChannelLaunch(kernels.launch("st_channel_bias").l(cy.address()).i(code(cy)).l(cb.address()).l(s[0])
            .l(s[1]).l(s[2]).i(layout).i(relu ? 1 : 0), s, layout, cy);
      } else {
        relu(cy, cy);
      }
    }
  }

  @Override
  public void conv2dBackwardData(Tensor dy, Tensor w, Tensor dx, Conv2dDesc desc) {
    enter();
    CudaTensor cdy = fl(dy);
    CudaTensor cw = fl(w);
    CudaTensor cdx = fl(dx);
    desc.check(dx.shape(), w.shape(), dy.shape(), "conv2dBackwardData");
    DType d = activations("conv2dBackwardData", cdy, cw, cdx);
    int layout = layoutOf("conv2dBackwardData", cdy, cw);
    noteWritten(cdx);
    adopt(cdx, layout);
    if (dx.dim(0) == 0) {
      return;
    }
    cudnnConv(CONV_BACKWARD_DATA, d, layout, convDims(dx.shape(), w.shape(), dy.shape(), desc), cdy.address(),
        cw.address(), cdx.address(), 0f,
        () -> convWhat("cudnnConvolutionBackwardData", dx.shape(), w.shape(), dy.shape(), desc, d));
  }

  @Override
  public void conv2dBackwardFilter(Tensor x, Tensor dy, Tensor dw, Tensor dbias, Conv2dDesc desc) {
    enter();
    CudaTensor cx = fl(x);
    CudaTensor cdy = fl(dy);
    CudaTensor cdw = fl(dw);
    desc.check(x.shape(), dw.shape(), dy.shape(), "conv2dBackwardFilter");
    DType d = activations("conv2dBackwardFilter", cx, cdy);
    int layout = layoutOf("conv2dBackwardFilter", cx, cdy);
    if (cdw.dtype() != DType.FLOAT32) {
      throw new IllegalArgumentException("conv2dBackwardFilter: dw must be FLOAT32 (the fp32 gradient), got " + dw);
    }
    CudaTensor cdb = dbias == null ? null : perChannel(x, fl(dbias), dw.dim(0), "dbias", "conv2dBackwardFilter");
    noteWritten(cdw);
    if (cdb != null) {
      noteWritten(cdb);
    }
    if (x.dim(0) == 0) {
      return;
    }
    int[] dims = convDims(x.shape(), dw.shape(), dy.shape(), desc);
    java.util.function.Supplier<String> what =
        () -> convWhat("cudnnConvolutionBackwardFilter", x.shape(), dw.shape(), dy.shape(), desc, d);
    if (layout == NHWC && (long) dw.dim(2) * dw.dim(3) > 1) {
      // cuDNN writes an NHWC filter gradient (K, kh, kw, C): compute it apart, then add it converted.
      CudaTensor tmp = convScratch.computeIfAbsent("dw" + d + Shape.str(dw.shape()), k -> allocate(d, dw.shape()));
      cudnnConv(CONV_BACKWARD_FILTER, d, layout, dims, cx.address(), cdy.address(), tmp.address(), 0f, what);
      adopt(tmp, NHWC);
      convertLayout(tmp, cdw, false, true);
    } else if (d == DType.FLOAT32) {
      cudnnConv(CONV_BACKWARD_FILTER, d, layout, dims, cx.address(), cdy.address(), cdw.address(), 1f, what); // +=
    } else {
      // cuDNN's filter gradient has the activations' dtype: compute it in bf16, then add it to the fp32 gradient.
      CudaTensor tmp = convScratch.computeIfAbsent("dw" + Shape.str(dw.shape()),
          k -> allocate(DType.BFLOAT16, dw.shape()));
      cudnnConv(CONV_BACKWARD_FILTER, d, layout, dims, cx.address(), cdy.address(), tmp.address(), 0f, what);
      axpy(1f, tmp, cdw);
    }
    if (cdb != null) {
      long[] s = {dy.dim(0), dy.dim(1), (long) dy.dim(2) * dy.dim(3)};
      bnReduce(3, null, cdy, null, null, null, null, null, cdb, null, s, layout); // dbias += sum of dy
    }
  }

  // Note [pooling kernels] (native/kernels/pool.cuh): max and average pooling run on the project's kernels, not
  // cuDNN's (whose backward was slow for channels-last bf16 on an H100: the ResNet-50 stem's max-pool backward
  // took 1.6 ms, ~4x its memory time), in both layouts, fp32 and bf16: forward one thread per output, backward one
  // thread per input gathering from the windows that cover it (8 channels a thread for NHWC with vec8), with no
  // atomics and no index buffer. Max routes dy to each window's first maximum of x, as the CPU engine does, so ties
  // and NaNs go where they go on the CPU; fp32 results equal CpuConv's bit for bit, bf16 ones are the CPU's result
  // on the same inputs rounded once.

  /** Checks x (N, C, H, W) against y (N, C, OH, OW) for d; returns {n, c, h, w, oh, ow}. */
  private static int[] poolDims(Tensor x, Tensor y, Pool2dDesc d, String op) {
    check4d(x, op);
    check4d(y, op);
    int oh = d.outH(x.dim(2));
    int ow = d.outW(x.dim(3));
    if (y.dim(0) != x.dim(0) || y.dim(1) != x.dim(1) || y.dim(2) != oh || y.dim(3) != ow || oh <= 0 || ow <= 0) {
      throw new IllegalArgumentException(op + ": shapes do not agree with " + d + ": x " + x + ", y " + y
          + " (expected y (" + x.dim(0) + ", " + x.dim(1) + ", " + oh + ", " + ow + "))");
    }
    long c = x.dim(1);
    if (c * x.dim(2) * x.dim(3) > Integer.MAX_VALUE || c * oh * ow > Integer.MAX_VALUE) {
      throw new IllegalArgumentException(op + ": one sample of x " + x + " or y " + y + " holds 2^31 values or"
          + " more; the pooling kernels address within a sample with 32-bit offsets (Note [pooling kernels])");
    }
    return new int[] {x.dim(0), x.dim(1), x.dim(2), x.dim(3), oh, ow};
  }

  /**
   * Adds pool.cuh's geometry arguments (n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, layout, vec, and inv = 1f /
   * (kh * kw), computed as CpuConv computes it, when avg) to l and launches it over items threads' worth of work.
   */
  private void poolLaunch(Kernels.Launch l, int[] dims, Pool2dDesc d, int layout, boolean vec, boolean avg,
      long items) {
    l.l(dims[0]).l(dims[1]).i(dims[2]).i(dims[3]).i(dims[4]).i(dims[5]).i(d.kernelH()).i(d.kernelW())
        .i(d.strideH()).i(d.strideW()).i(d.padH()).i(d.padW()).i(layout).i(vec ? 1 : 0);
    if (avg) {
      l.f(1f / (d.kernelH() * d.kernelW()));
    }
    l.run(grid(items), BLOCK, compute);
  }

  private void poolForward(boolean max, Tensor x, Tensor y, Pool2dDesc desc, String op) {
    enter();
    CudaTensor cx = fl(x);
    CudaTensor cy = fl(y);
    int[] dims = poolDims(x, y, desc, op);
    activations(op, cx, cy);
    int layout = layoutOf(op, cx);
    noteWritten(cy);
    adopt(cy, layout);
    if (x.numel() > 0) {
      boolean vec = layout == NHWC && vec8(dims[1], cx, cy); // 8 channels a thread
      poolLaunch(kernels.launch(max ? "st_max_pool_fwd" : "st_avg_pool_fwd").l(cx.address()).l(cy.address())
          .i(code(cx)), dims, desc, layout, vec, !max, y.numel() / (vec ? 8 : 1));
    }
  }

  private void poolBackward(boolean max, Tensor x, Tensor y, Tensor dy, Tensor dx, Pool2dDesc desc, String op) {
    enter();
    CudaTensor cx = fl(x);
    CudaTensor cy = fl(y);
    CudaTensor cdy = fl(dy);
    CudaTensor cdx = fl(dx);
    int[] dims = poolDims(dx, dy, desc, op);
    if (!java.util.Arrays.equals(x.shape(), dx.shape()) || !java.util.Arrays.equals(y.shape(), dy.shape())) {
      throw new IllegalArgumentException(op + ": x " + x + " / dx " + dx + " and y " + y + " / dy " + dy
          + " must have the same shapes");
    }
    activations(op, cx, cy, cdy, cdx);
    // Max pooling takes the layout from x; average pooling's x is dx, whose layout the layer declared.
    int layout = layoutOf(op, cx, cy, cdy);
    noteWritten(cdx);
    adopt(cdx, layout);
    if (dx.numel() > 0) {
      boolean vec = layout == NHWC && vec8(dims[1], cx, cdy, cdx);
      // The max kernel decides each window's maximum from x; y is checked above but not read.
      Kernels.Launch l = max
          ? kernels.launch("st_max_pool_bwd").l(cx.address()).l(cdy.address()).l(cdx.address())
          : kernels.launch("st_avg_pool_bwd").l(cdy.address()).l(cdx.address());
      poolLaunch(l.i(code(cdx)), dims, desc, layout, vec, !max, dx.numel() / (vec ? 8 : 1));
    }
  }

  @Override
  public void maxPool2dForward(Tensor x, Tensor y, Pool2dDesc desc) {
    poolForward(true, x, y, desc, "maxPool2dForward");
  }

  @Override
  public void maxPool2dBackward(Tensor x, Tensor y, Tensor dy, Tensor dx, Pool2dDesc desc) {
    poolBackward(true, x, y, dy, dx, desc, "maxPool2dBackward");
  }

  @Override
  public void avgPool2dForward(Tensor x, Tensor y, Pool2dDesc desc) {
    poolForward(false, x, y, desc, "avgPool2dForward");
  }

  @Override
  public void avgPool2dBackward(Tensor dy, Tensor dx, Pool2dDesc desc) {
    // The average-pooling backward reads neither x nor y; dx and dy stand in for them in the checks.
    poolBackward(false, dx, dy, dy, dx, desc, "avgPool2dBackward");
  }

  /** (N, C, H, W) of a batch-norm input: rank 4, or rank 2/3 read as H = spatial, W = 1. */
  private static int[] bnDims(Tensor x, String op) {
    int[] s = x.shape();
    if (s.length < 2 || s.length > 4) {
      throw new IllegalArgumentException(op + " expects (N, C, spatial...) with 0 to 2 spatial dims, got " + x);
    }
    return new int[] {s[0], s[1], s.length > 2 ? s[2] : 1, s.length > 3 ? s[3] : 1};
  }

  private static double bnEps(float eps, String op) {
    if (!(eps >= 1e-5f)) {
      throw new IllegalArgumentException(op + ": eps must be >= 1e-5 on the GPU (cuDNN's CUDNN_BN_MIN_EPSILON)"
          + " for evaluation mode, which runs cuDNN's batch norm; got " + eps);
    }
    return eps;
  }

  // Note [fused batch norm + ReLU]: the per-rank training forward and backward run on the project's kernels
  // (bn_sync.cuh), not cuDNN's: its legacy batch norm took 46 ms of a ResNet-50 step on an H100 channels-first
  // and 750 ms channels-last (NHWC), and these kernels also take the ReLU that follows (nn.Model fuses
  // "batchnorm2d, relu" pairs): forward = statistics (a chunked per-channel reduction), finalize, one apply
  // pass writing relu(bn(x)); backward = one reduction of [g, g * xhat] (g = dy, zeroed where the output was 0,
  // recomputed from x, so the ReLU's output need not be read) that also adds dbeta and dgamma, then one apply
  // pass. The arithmetic is that of the synchronised ops (and CpuConv), so results are deterministic and
  // agree with the CPU engine to rounding. Evaluation mode keeps cuDNN's inference kernel.

  @Override
  public void batchNormForwardTraining(Tensor x, Tensor gamma, Tensor beta, Tensor y, Tensor runningMean,
      Tensor runningVar, float momentum, float eps, Tensor saveMean, Tensor saveInvStd) {
    batchNormForwardTraining(x, gamma, beta, y, runningMean, runningVar, momentum, eps, saveMean, saveInvStd, false);
  }

  @Override
  public void batchNormForwardTraining(Tensor x, Tensor gamma, Tensor beta, Tensor y, Tensor runningMean,
      Tensor runningVar, float momentum, float eps, Tensor saveMean, Tensor saveInvStd, boolean relu) {
    enter();
    String op = "batchNormForwardTraining";
    CudaTensor cx = bnActivation(x, op, y);
    CudaTensor cy = fl(y);
    long[] s = bnShape(x, op);
    if (s[0] * s[2] < 2) {
      throw new IllegalArgumentException(op + ": needs more than one value per channel, got " + x);
    }
    bnEps(eps, op); // evaluation mode needs it (cuDNN): refused at the first training step, not after training
    int c = Math.toIntExact(s[1]);
    int layout = layoutOf(op, cx);
    CudaTensor g = perChannel(x, fl(gamma), c, "gamma", op);
    CudaTensor b = perChannel(x, fl(beta), c, "beta", op);
    CudaTensor rm = perChannel(x, fl(runningMean), c, "runningMean", op);
    CudaTensor rv = perChannel(x, fl(runningVar), c, "runningVar", op);
    CudaTensor sm = perChannel(x, fl(saveMean), c, "saveMean", op);
    CudaTensor si = perChannel(x, fl(saveInvStd), c, "saveInvStd", op);
    for (CudaTensor o : new CudaTensor[] {cy, rm, rv, sm, si}) {
      noteWritten(o);
    }
    adopt(cy, layout);
    CudaTensor stats = bnSums(c);
    bnReduce(0, cx, null, null, null, null, null, stats, null, null, s, layout);
    kernels.launch("st_bn_finalize").l(stats.address()).l(c).l(s[0] * s[2]).f(momentum).f(eps).l(sm.address())
        .l(si.address()).l(rm.address()).l(rv.address()).run(grid(c), BLOCK, compute);
    bnApply(cx, cy, g, b, sm, si, s, layout, relu);
  }

  @Override
  public void batchNormForwardInference(Tensor x, Tensor gamma, Tensor beta, Tensor runningMean,
      Tensor runningVar, float eps, Tensor y) {
    enter();
    String op = "batchNormForwardInference";
    CudaTensor cx = fl(x);
    CudaTensor cy = fl(y);
    int[] n = bnDims(x, op);
    if (!java.util.Arrays.equals(x.shape(), y.shape())) {
      throw new IllegalArgumentException(op + ": y " + y + " must have x's shape " + x);
    }
    DType d = activations(op, cx, cy);
    int layout = layoutOf(op, cx);
    adopt(cy, layout);
    CudaTensor g = perChannel(x, fl(gamma), n[1], "gamma", op);
    CudaTensor b = perChannel(x, fl(beta), n[1], "beta", op);
    CudaTensor rm = perChannel(x, fl(runningMean), n[1], "runningMean", op);
    CudaTensor rv = perChannel(x, fl(runningVar), n[1], "runningVar", op);
    double e = bnEps(eps, op);
    noteWritten(cy);
    if (x.numel() > 0) {
      dnn(Native.cudnnBnForwardInference(cudnn().handle(), d.ordinal(), layout, n[0], n[1], n[2], n[3],
          cx.address(), cy.address(), g.address(), b.address(), rm.address(), rv.address(), e),
          () -> "cudnnBatchNormalizationForwardInference x " + x);
    }
  }

  @Override
  public void batchNormBackward(Tensor x, Tensor dy, Tensor gamma, Tensor saveMean, Tensor saveInvStd,
      Tensor dx, Tensor dgamma, Tensor dbeta) {
    bnBackward(x, null, dy, gamma, null, saveMean, saveInvStd, dx, dgamma, dbeta);
  }

  @Override
  public void batchNormBackwardRelu(Tensor x, Tensor y, Tensor dy, Tensor gamma, Tensor beta, Tensor saveMean,
      Tensor saveInvStd, Tensor dx, Tensor dgamma, Tensor dbeta) {
    if (!java.util.Arrays.equals(x.shape(), y.shape())) {
      throw new IllegalArgumentException("batchNormBackwardRelu: y " + y + " must have x's shape " + x);
    }
    bnBackward(x, y, dy, gamma, fl(beta), saveMean, saveInvStd, dx, dgamma, dbeta);
  }

  /** Per-rank batch-norm backward, through the fused ReLU when beta is given (Note [fused batch norm + ReLU]). */
  private void bnBackward(Tensor x, Tensor y, Tensor dy, Tensor gamma, CudaTensor beta, Tensor saveMean,
      Tensor saveInvStd, Tensor dx, Tensor dgamma, Tensor dbeta) {
    enter();
    String op = beta != null ? "batchNormBackwardRelu" : "batchNormBackward";
    CudaTensor cx = bnActivation(x, op, dy, dx);
    CudaTensor cdy = fl(dy);
    CudaTensor cdx = fl(dx);
    long[] s = bnShape(x, op);
    int c = Math.toIntExact(s[1]);
    int layout = layoutOf(op, cx, cdy);
    CudaTensor g = perChannel(x, fl(gamma), c, "gamma", op);
    CudaTensor b = beta == null ? null : perChannel(x, beta, c, "beta", op);
    CudaTensor sm = perChannel(x, fl(saveMean), c, "saveMean", op);
    CudaTensor si = perChannel(x, fl(saveInvStd), c, "saveInvStd", op);
    CudaTensor dg = perChannel(x, fl(dgamma), c, "dgamma", op);
    CudaTensor db = perChannel(x, fl(dbeta), c, "dbeta", op);
    for (CudaTensor o : new CudaTensor[] {cdx, dg, db}) {
      noteWritten(o);
    }
    adopt(cdx, layout);
    CudaTensor sums = bnSums(c);
    bnReduce(b != null ? 2 : 1, cx, cdy, sm, si, g, b, sums, db, dg, s, layout);
    bnBackwardApply(cx, cdy, g, b, sm, si, sums, s[0] * s[2], cdx, s, layout);
  }

  @Override
  public void synchronize() {
    enter();
    compute.synchronize();
  }

  /**
   * Waits for all streams, then frees everything: tensors (root arena), library handles, pinned buffers,
   * events, streams, the kernel module, and releases the primary context. Idempotent; the first failure is
   * thrown after everything else was released.
   */
  @Override
  public void close() {
    synchronized (this) {
      if (closed) {
        return;
      }
      closed = true;
    }
    RuntimeException first = null;
    List<CudaGraph> openGraphs = List.of();
    try {
      makeCurrent();
      openGraphs = releaseGraphs();
      for (CudaStream s : new CudaStream[] {compute, copy, comm}) {
        if (s != null) {
          s.synchronize();
        }
      }
    } catch (RuntimeException e) {
      first = e;
    }
    List<CudaEvent> open;
    synchronized (events) {
      open = new ArrayList<>(events);
    }
    List<AutoCloseable> order = new ArrayList<>(openGraphs); // CUDA graphs first: they use the memory below
    order.add(arena); // tensors first: their memory, the scratch and the cuBLASLt workspace
    CudaArena registrables = registrableArena();
    if (registrables != null) {
      order.add(registrables);
    }
    order.addAll(open);
    for (int i = owned.size() - 1; i >= 0; i--) {
      order.add(owned.get(i));
    }
    for (AutoCloseable r : order) {
      try {
        r.close();
      } catch (Exception e) {
        if (first == null) {
          first = e instanceof RuntimeException re ? re : new CudaException("closing " + r, e);
        } else {
          first.addSuppressed(e);
        }
      }
    }
    try {
      Cuda.check(cuDevicePrimaryCtxRelease(cuDevice), "cuDevicePrimaryCtxRelease(" + ordinal + ")");
    } catch (RuntimeException e) {
      if (first == null) {
        first = e;
      } else {
        first.addSuppressed(e);
      }
    }
    Cuda.forgetCurrent(context);
    if (first != null) {
      throw first;
    }
  }

  @Override
  public String toString() {
    return "CudaDevice[" + name + (closed ? ", closed" : "") + "]";
  }
}
