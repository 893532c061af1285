/**
 * The CUDA backend: {@link dev.sparktrainer.cuda.CudaDevice} implements the engine's op set on one NVIDIA GPU
 * and {@link dev.sparktrainer.cuda.NcclCommunicator} the communicator over NCCL.
 *
 * <p>Split (DESIGN.md, "Engine split"): JCuda's driver API owns contexts, device memory, streams, events,
 * module loading and kernel launches; the project's kernels come from native/ as one fatbin; NCCL, cuBLASLt
 * and cuDNN are reached through one small JNI library ({@code libsparktrainer_jni.so}), bound by the
 * package-private class {@code Native} whose every call returns a status that one {@code check} turns into a
 * {@link dev.sparktrainer.cuda.CudaException} carrying the library's own error text.
 *
 * <p>Ownership: device memory belongs to a tree of {@link dev.sparktrainer.cuda.CudaArena}s (closing a parent
 * closes its children; close is idempotent; use after close throws {@link IllegalStateException}); streams,
 * events, pinned buffers and library handles belong to the {@link dev.sparktrainer.cuda.CudaDevice} that
 * created them and are released when it closes. Nothing here uses {@code finalize()}.
 *
 * <p>Loading: {@link dev.sparktrainer.cuda.NativeLoader} finds the fatbin and the JNI library inside the jar
 * (per platform and CUDA major version) or under an override folder, and says what is missing when loading
 * fails. Nothing in this package imports Spark.
 */
package dev.sparktrainer.cuda;
