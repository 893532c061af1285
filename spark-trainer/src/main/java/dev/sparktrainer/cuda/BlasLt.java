package dev.sparktrainer.cuda;

import java.util.ArrayList;
import java.util.List;

/**
 * One cuBLASLt handle and its workspace for one {@link CudaDevice}, reached through the JNI library.
 * Plans (descriptors + the heuristic's algorithm) are cached per shape in the JNI library (Note [matmul plan
 * cache] in native/jni/sparktrainer_jni.cpp). Row-major calls are mapped onto cuBLAS's column-major view: row-major C(m, n) = op(A) op(B) is
 * column-major C^T(n, m) = op(B)^T op(A)^T, so A and B swap places and no data moves.
 */
final class BlasLt implements AutoCloseable {
  private static final System.Logger LOG = System.getLogger(BlasLt.class.getName());

  /**
   * The cuBLASLt workspace limit in bytes: the heuristic picks, per shape, an algorithm that needs at most this
   * much; the buffer holds only what the chosen ones need (Note [cuBLASLt workspace]).
   */
  static final long WORKSPACE_BYTES = 32L << 20;

  // Note [cuBLASLt workspace]: as Note [cuDNN workspace] in CudaDevice. The heuristic chooses each matmul's
  // algorithm among those that need at most WORKSPACE_BYTES of workspace and the plan is cached per shape (Note
  // [matmul plan cache] in sparktrainer_jni.cpp), but the buffer is only as large as the most that the chosen
  // algorithms have needed so far (the heuristic result's workspaceSize), rounded up to 1 MiB within the limit
  // (CudaDevice.workspaceSize), and there is none while none needs any. (The fixed 32 MiB buffer was the whole
  // difference between the benchmark MLP's 3.30 GiB peak at W=1 and PyTorch's 3.27 GiB.) The native call gets the
  // limit and the buffer apart: the limit chooses (it is part of the plan's key), so the algorithms, and the bits,
  // are those of a buffer of the limit's size. When the algorithm in use needs more than the buffer, the call runs
  // nothing and answers CUBLASLT_WORKSPACE_TOO_SMALL with the bytes; the buffer grows and the call is repeated.
  // Growing first waits for the streams that queued matmuls on the old buffer (the compute stream in practice),
  // then frees it and allocates the new one (never both at once). It is an allocation, so it is refused while a
  // CUDA graph is captured (GraphCaptureException; the trainer's eager warm-up steps meet every shape first), and
  // freeing the old buffer makes graphs captured before stale (they point at it; CudaGraph.freesAtCapture).

  private final CudaDevice device;
  private final CudaArena arena;
  private volatile CudaBuffer workspace; // null until a chosen algorithm needs workspace
  private volatile long workspaceNeed; // the most workspace a chosen algorithm has needed, bytes
  private final List<CudaStream> users = new ArrayList<>(2); // streams that queued matmuls on the buffer
  private volatile CudaStream lastUser; // the last of them (checked on every call without the lock)
  private long handle;
  private volatile int smCountTarget; // 0: all SMs (Note [GEMM SM carve-out] in CudaDevice)

  BlasLt(CudaDevice device, CudaArena arena) {
    this.device = device;
    this.arena = arena;
    NativeLoader.loadJni();
    long[] out = new long[1];
    device.makeCurrent();
    Native.check(Native.cublasLtCreate(out), "cublasLtCreate on " + device.name());
    this.handle = out[0];
  }

  /** Bytes of the workspace now (0 while none is allocated); Note [cuBLASLt workspace]. */
  long workspaceBytes() {
    CudaBuffer ws = workspace;
    return ws == null ? 0 : ws.bytes();
  }

  /** The most workspace, in bytes, that the matmul algorithms this handle ran have needed. */
  long workspaceNeed() {
    return workspaceNeed;
  }

  /**
   * Makes the workspace at least {@code need} bytes (Note [cuBLASLt workspace]): waits for the streams that used
   * the old buffer, frees it and allocates one of CudaDevice.workspaceSize(need). Refused during a CUDA graph
   * capture.
   */
  synchronized void growWorkspace(long need) {
    if (handle == 0) {
      throw new IllegalStateException("cuBLASLt handle of " + device.name() + " is closed");
    }
    CudaBuffer old = workspace;
    if (need <= (old == null ? 0 : old.bytes())) {
      return;
    }
    long size = CudaDevice.workspaceSize(need, WORKSPACE_BYTES);
    device.checkNotCapturing("growing the cuBLASLt workspace to " + size + " bytes");
    if (old != null) {
      for (CudaStream s : users) {
        s.synchronize(); // queued matmuls may still use the old buffer
      }
      users.clear();
      lastUser = null;
      workspace = null;
      old.close();
    }
    workspace = arena.allocate(size, "cuBLASLt workspace");
    LOG.log(System.Logger.Level.DEBUG, "{0}: cuBLASLt workspace now {1} bytes (limit {2})", device.name(), size,
        WORKSPACE_BYTES);
  }

  /** The SMs later matmuls are chosen and launched for; 0 for all (Note [GEMM SM carve-out] in CudaDevice). */
  void smCountTarget(int sms) {
    this.smCountTarget = sms;
  }

  /** Remembers that {@code stream} queued a matmul on the current buffer (growWorkspace waits for it). */
  private synchronized void noteUser(CudaStream stream) {
    if (!users.contains(stream)) {
      users.add(stream);
    }
    lastUser = stream;
  }

  /**
   * Row-major C = alpha op(A) op(B) + beta C (+ bias, relu per epilogue), on {@code stream}. aType, bType
   * and cType are DType ordinals; lda/ldb/ldc are the row lengths of the stored matrices.
   */
  void matmulRowMajor(boolean transA, boolean transB, long m, long n, long k, float alpha, long a, long lda,
      int aType, long b, long ldb, int bType, float beta, long c, long ldc, int cType, boolean tf32,
      int epilogue, long bias, CudaStream stream) {
    int st = tryMatmulRowMajor(transA, transB, m, n, k, alpha, a, lda, aType, b, ldb, bType, beta, c, ldc, cType,
        tf32, epilogue, bias, stream);
    if (st != 0) {
      Native.check(st, "cublasLtMatmul(m=" + m + ", n=" + n + ", k=" + k + ", transA=" + transA + ", transB="
          + transB + ", types " + aType + "/" + bType + "->" + cType + ") on " + device.name());
    }
  }

  /**
   * {@link #matmulRowMajor} returning the JNI status instead of throwing (0 = queued). Answers the call's workspace
   * requests (Note [cuBLASLt workspace]): grows the workspace and calls again; the growth throws during a CUDA graph
   * capture. A request that asks for no more than it was given is returned (and so thrown by matmulRowMajor).
   */
  int tryMatmulRowMajor(boolean transA, boolean transB, long m, long n, long k, float alpha, long a, long lda,
      int aType, long b, long ldb, int bType, float beta, long c, long ldc, int cType, boolean tf32,
      int epilogue, long bias, CudaStream stream) {
    return tryMatmulRowMajor(transA, transB, m, n, k, alpha, a, lda, aType, b, ldb, bType, beta, c, ldc, cType, tf32,
        epilogue, bias, 0, 0, stream);
  }

  /**
   * {@link #tryMatmulRowMajor} with, for the epilogues 4 and 5 (Note [fused GELU] in nn.Linear), GELU's input
   * written to {@code aux}, C's shape and type with rows of {@code auxLd} elements.
   */
  int tryMatmulRowMajor(boolean transA, boolean transB, long m, long n, long k, float alpha, long a, long lda,
      int aType, long b, long ldb, int bType, float beta, long c, long ldc, int cType, boolean tf32,
      int epilogue, long bias, long aux, long auxLd, CudaStream stream) {
    long[] need = new long[1];
    for (int attempt = 0; ; attempt++) {
      if (handle == 0) {
        throw new IllegalStateException("cuBLASLt handle of " + device.name() + " is closed");
      }
      CudaBuffer ws = workspace;
      long wsBytes = ws == null ? 0 : ws.bytes();
      need[0] = 0;
      int st = Native.cublasLtMatmul(handle, transB, transA, n, m, k, alpha, b, ldb, bType, a, lda, aType, beta,
          c, ldc, cType, tf32 ? 1 : 0, epilogue, bias, aux, auxLd, ws == null ? 0 : ws.address(), wsBytes,
          WORKSPACE_BYTES,
          smCountTarget, need, stream.handle());
      if (st == 0) {
        if (need[0] > workspaceNeed) {
          workspaceNeed = need[0];
        }
        if (ws != null && stream != lastUser) {
          noteUser(stream);
        }
        return 0;
      }
      if (st != Native.CUBLASLT_WORKSPACE_TOO_SMALL || need[0] <= wsBytes || attempt >= 2) {
        return st;
      }
      growWorkspace(need[0]);
    }
  }

  @Override
  public void close() {
    if (handle != 0) {
      long h = handle;
      handle = 0;
      try {
        CudaBuffer ws = workspace;
        workspace = null;
        if (ws != null) {
          ws.close();
        }
      } finally {
        device.makeCurrent();
        Native.check(Native.cublasLtDestroy(h), "cublasLtDestroy");
      }
    }
  }
}
