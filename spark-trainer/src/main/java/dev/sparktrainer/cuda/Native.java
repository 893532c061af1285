package dev.sparktrainer.cuda;

/**
 * The Java side of {@code libsparktrainer_jni.so} (native/jni/sparktrainer_jni.cpp): one flat class of
 * static natives, each returning a status (0 = success, else {@code (library << 24) | code}). Device
 * pointers, streams and library handles are raw addresses in longs; outputs come back in the arrays passed
 * in. Callers use {@link #check} to turn a status into an exception with the library's error text.
 *
 * <p>Only this package calls it, and only after {@link NativeLoader#loadJni()} succeeded.
 */
final class Native {
  private Native() {}

  static final int LIB_NCCL = 1;
  static final int LIB_CUBLAS = 2;
  static final int LIB_CUDNN = 3;
  static final int LIB_CUDART = 4;
  static final int LIB_JNI = 5;

  /** ncclInProgress: a non-blocking NCCL call is still running (poll ncclCommGetAsyncError). */
  static final int NCCL_IN_PROGRESS = 7;

  /**
   * JNI_NO_CUDNN_ENGINE of the binding: the cuDNN graph API has no engine for a convolution (use the legacy
   * API for that shape).
   */
  static final int NO_CUDNN_ENGINE = (LIB_JNI << 24) | 6;

  /**
   * JNI_CUDNN_WORKSPACE: the convolution's chosen algorithm needs more workspace than the buffer given, {@code
   * need[0]} bytes; nothing ran (Note [cuDNN workspace] in CudaDevice).
   */
  static final int CUDNN_WORKSPACE_TOO_SMALL = (LIB_JNI << 24) | 7;

  /**
   * JNI_CUDNN_TRIAL_WORKSPACE: timing the candidate engines (search 1, graph API) needs a workspace of {@code
   * need[0]} bytes for this call; nothing ran (Note [cuDNN workspace] in CudaDevice).
   */
  static final int CUDNN_TRIAL_WORKSPACE = (LIB_JNI << 24) | 8;

  /**
   * JNI_CUBLASLT_WORKSPACE: the matmul's chosen algorithm needs more workspace than the buffer given, {@code
   * need[0]} bytes; nothing ran (Note [cuBLASLt workspace] in BlasLt).
   */
  static final int CUBLASLT_WORKSPACE_TOO_SMALL = (LIB_JNI << 24) | 9;

  /** NCCL reduction codes of the binding. */
  static final int OP_SUM = 0;
  static final int OP_AVG = 4;

  static int library(int status) {
    return (status >>> 24) & 0xff;
  }

  static int code(int status) {
    return status & 0xffffff;
  }

  static boolean ncclInProgress(int status) {
    return library(status) == LIB_NCCL && code(status) == NCCL_IN_PROGRESS;
  }

  static String libraryName(int status) {
    return switch (library(status)) {
      case LIB_NCCL -> "NCCL";
      case LIB_CUBLAS -> "cuBLASLt";
      case LIB_CUDNN -> "cuDNN";
      case LIB_CUDART -> "CUDA runtime";
      case LIB_JNI -> "JNI";
      default -> "unknown";
    };
  }

  /** Throws a {@link CudaException} naming {@code what} and the library's error text unless status is 0. */
  static void check(int status, String what) {
    if (status != 0) {
      throw new CudaException(libraryName(status), code(status), what + " failed: " + errorString(status));
    }
  }

  // ---- errors and versions ----
  static native String errorString(int status);

  /** out[0] NCCL version code, out[1] cuBLASLt version, out[2] CUDA runtime version, out[3] cuDNN or -1. */
  static native int versions(long[] out);

  // ---- NCCL ----
  static native int ncclUniqueIdBytes();

  static native int ncclGetUniqueId(byte[] out);

  /** Non-blocking; commOut = {comm, cell} (Note [NCCL handle cells] in sparktrainer_jni.cpp). */
  static native int ncclCommInitRank(long[] commOut, int nranks, byte[] id, int rank, int device);

  /**
   * ncclCommSplit(parent, color 0, key) with config.blocking = blocking and config.CTAPolicy = ctaPolicy (-1:
   * NCCL's default); commOut = {child now (may be 0), cell} (Note [NCCL handle cells] in sparktrainer_jni.cpp).
   */
  static native int ncclCommSplit(long parent, int key, int blocking, int ctaPolicy, long[] commOut);

  /** NCCL_CTA_POLICY_ZERO: collectives that can run on the copy engines do (Note [copy-engine collectives]). */
  static final int NCCL_CTA_POLICY_ZERO = 2;

  /** The communicator NCCL stored in a cell of ncclCommInitRank/ncclCommSplit, freeing the cell: call once done. */
  static native long ncclTakeComm(long cell);

  static native int ncclCommGetAsyncError(long comm, int[] out);

  static native String ncclGetLastError(long comm);

  static native int ncclAllReduce(long send, long recv, long count, int dtype, int op, long comm, long stream);

  static native int ncclBroadcast(long send, long recv, long count, int dtype, int root, long comm, long stream);

  static native int ncclReduceScatter(long send, long recv, long recvCount, int dtype, int op, long comm,
      long stream);

  static native int ncclAllGather(long send, long recv, long sendCount, int dtype, long comm, long stream);

  /** ncclAlltoAll (NCCL 2.28+): count elements of send's chunk r to rank r, rank r's into recv's chunk r. */
  static native int ncclAlltoAll(long send, long recv, long count, int dtype, long comm, long stream);

  /**
   * ncclGather (NCCL 2.28+): count elements of every rank's send into root's recv chunk r; in place on root when send
   * is root's recv + root * count.
   */
  static native int ncclGather(long send, long recv, long count, int dtype, int root, long comm, long stream);

  /** ncclMemAlloc in the current context; out[0] = the address. */
  static native int ncclMemAlloc(long bytes, long[] out);

  static native int ncclMemFree(long address);

  /** NCCL_VERSION_CODE of the headers the JNI library was compiled against. */
  static native int ncclCompiledVersion();

  /** ncclCommWindowRegister(..., NCCL_WIN_COLL_SYMMETRIC), a collective; out[0] = the window (NCCL 2.27+). */
  static native int ncclCommWindowRegister(long comm, long address, long bytes, long[] out);

  static native int ncclCommWindowDeregister(long comm, long window);

  static native int ncclGroupStart();

  static native int ncclGroupEnd();

  static native int ncclCommFinalize(long comm);

  static native int ncclCommDestroy(long comm);

  static native int ncclCommAbort(long comm);

  // ---- cuBLASLt ----
  static native int cublasLtCreate(long[] out);

  static native int cublasLtDestroy(long handle);

  /**
   * Column-major, in place (D = C): C = alpha op(A) op(B) + beta C. Types are DType ordinals; computeMode 0
   * = fp32, 1 = TF32 allowed; epilogue 0 none, 1 bias, 2 relu, 3 relu+bias, 4 gelu+bias, 5 gelu; 4 and 5 also
   * write GELU's input to {@code aux} (C's type, leading dimension {@code auxLd}, a multiple of 8; Note [fused GELU]
   * in nn.Linear). The algorithm is chosen within {@code
   * limitBytes} of workspace and cached per shape; the buffer ({@code workspace}, {@code workspaceBytes}) may be
   * smaller: if the chosen algorithm needs more, nothing runs and the status is {@link
   * #CUBLASLT_WORKSPACE_TOO_SMALL}. {@code need[0]} receives the bytes the algorithm needs (on success too).
   * {@code smCountTarget}: 0 for all SMs, else the number of SMs the algorithm is chosen and launched for
   * (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, part of the cached plan's key; Note [GEMM SM carve-out] in CudaDevice).
   */
  static native int cublasLtMatmul(long handle, boolean transA, boolean transB, long m, long n, long k,
      float alpha, long a, long lda, int aType, long b, long ldb, int bType, float beta, long c, long ldc,
      int cType, int computeMode, int epilogue, long bias, long aux, long auxLd, long workspace,
      long workspaceBytes, long limitBytes, int smCountTarget, long[] need, long stream);

  // ---- cuDNN (opened on first use) ----
  static native int cudnnCreate(long[] out);

  static native int cudnnDestroy(long handle);

  static native int cudnnSetStream(long handle, long stream);

  /**
   * Convolutions (Note [cuDNN ops] in sparktrainer_jni.cpp). dtype: DType ordinal (FLOAT32 or BFLOAT16);
   * layout 0 NCHW, 1 NHWC; dims: n, c, h, w, k, kh, kw, padH, padW, strideH, strideW, dilationH, dilationW,
   * groups, oh, ow; computeMode 0 fp32 (no TF32), 1 TF32 allowed, 2 bf16 tensor cores; search 0 heuristics,
   * 1 timed trials (cudnn.benchmark). The output is
   * result + beta * output. Algorithms are chosen within {@code limitBytes} of workspace and cached per shape; the
   * buffer ({@code workspace}, {@code workspaceBytes}) may be smaller: if the chosen algorithm needs more, nothing
   * runs and the status is {@link #CUDNN_WORKSPACE_TOO_SMALL}. {@code need[0]} receives the bytes the algorithm
   * needs (on success too).
   */
  static native int cudnnConvForward(long handle, int dtype, int layout, int[] dims, int computeMode, int search,
      long x, long w, long y, float beta, long workspace, long workspaceBytes, long limitBytes, long[] need);

  static native int cudnnConvBackwardData(long handle, int dtype, int layout, int[] dims, int computeMode,
      int search, long dy, long w, long dx, float beta, long workspace, long workspaceBytes, long limitBytes,
      long[] need);

  static native int cudnnConvBackwardFilter(long handle, int dtype, int layout, int[] dims, int computeMode,
      int search, long x, long dy, long dw, float beta, long workspace, long workspaceBytes, long limitBytes,
      long[] need);

  /**
   * The same convolutions through cuDNN's backend (graph) API (Note [cuDNN graph convolutions]): dir 0
   * forward (a x, b w, c y), 1 backward data (a dy, b w, c dx), 2 backward filter (a x, b dy, c dw); the other
   * arguments as above. {@link #NO_CUDNN_ENGINE}: no engine for this shape (remembered per shape natively);
   * {@link #CUDNN_TRIAL_WORKSPACE}: timing the candidates needs a buffer of {@code need[0]} bytes.
   */
  static native int cudnnGraphConv(long handle, int dir, int dtype, int layout, int[] dims, int computeMode,
      int search, long a, long b, long c, float beta, long workspace, long workspaceBytes, long limitBytes,
      long[] need);

  /**
   * Batch norm in evaluation mode (spatial); per-channel tensors are FLOAT32. Training and its backward run on the
   * project's kernels (bn_sync.cuh), pooling too (pool.cuh).
   */
  static native int cudnnBnForwardInference(long handle, int dtype, int layout, int n, int c, int h, int w,
      long x, long y, long gamma, long beta, long runningMean, long runningVar, double eps);
}
