package dev.sparktrainer.cuda;

/**
 * A CUDA driver, CUDA runtime, NCCL, cuBLASLt or cuDNN call failed. The message names the call, the
 * library's own error text and, where known, the likely cause.
 */
public class CudaException extends RuntimeException {
  private static final long serialVersionUID = 1L;
  private final String library;
  private final int code;

  /** A failure of {@code library} with its numeric {@code code}. */
  public CudaException(String library, int code, String message) {
    super(message);
    this.library = library;
    this.code = code;
  }

  /** A failure with a cause (e.g. an {@link UnsatisfiedLinkError} while loading). */
  public CudaException(String message, Throwable cause) {
    super(message, cause);
    this.library = "loader";
    this.code = -1;
  }

  /** Which library failed: "CUDA driver", "NCCL", "cuBLASLt", "cuDNN", "CUDA runtime", "JNI" or "loader". */
  public String library() {
    return library;
  }

  /** The library's status code (CUresult, ncclResult_t, cublasStatus_t, ...), or -1. */
  public int code() {
    return code;
  }
}
