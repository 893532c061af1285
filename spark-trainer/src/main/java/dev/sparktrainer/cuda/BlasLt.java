package dev.sparktrainer.cuda;

/**
 * One cuBLASLt handle and its workspace for one {@link CudaDevice}, reached through the JNI library.
 * Plans (descriptors + the heuristic's algorithm) are cached per shape in the JNI library (Note [matmul plan
 * cache] in native/jni/sparktrainer_jni.cpp). Row-major calls are mapped onto cuBLAS's column-major view: row-major C(m, n) = op(A) op(B) is
 * column-major C^T(n, m) = op(B)^T op(A)^T, so A and B swap places and no data moves.
 */
final class BlasLt implements AutoCloseable {
  /** Workspace cuBLASLt may use per call (the heuristic picks algorithms that fit). */
  static final long WORKSPACE_BYTES = 32L << 20;

  private final CudaDevice device;
  private final CudaBuffer workspace;
  private long handle;

  BlasLt(CudaDevice device, CudaArena arena) {
    this.device = device;
    NativeLoader.loadJni();
    long[] out = new long[1];
    device.makeCurrent();
    Native.check(Native.cublasLtCreate(out), "cublasLtCreate on " + device.name());
    this.handle = out[0];
    CudaBuffer ws = null;
    try {
      ws = arena.allocate(WORKSPACE_BYTES, "cuBLASLt workspace");
    } finally {
      if (ws == null) {
        Native.cublasLtDestroy(handle);
        handle = 0;
      }
    }
    this.workspace = ws;
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

  /** {@link #matmulRowMajor} returning the JNI status instead of throwing (0 = queued). */
  int tryMatmulRowMajor(boolean transA, boolean transB, long m, long n, long k, float alpha, long a, long lda,
      int aType, long b, long ldb, int bType, float beta, long c, long ldc, int cType, boolean tf32,
      int epilogue, long bias, CudaStream stream) {
    if (handle == 0) {
      throw new IllegalStateException("cuBLASLt handle of " + device.name() + " is closed");
    }
    return Native.cublasLtMatmul(handle, transB, transA, n, m, k, alpha, b, ldb, bType, a, lda, aType, beta,
        c, ldc, cType, tf32 ? 1 : 0, epilogue, bias, workspace.address(), workspace.bytes(), stream.handle());
  }

  @Override
  public void close() {
    if (handle != 0) {
      long h = handle;
      handle = 0;
      try {
        workspace.close();
      } finally {
        device.makeCurrent();
        Native.check(Native.cublasLtDestroy(h), "cublasLtDestroy");
      }
    }
  }
}
