package dev.sparktrainer.comm;

import dev.sparktrainer.engine.Tensor;

/**
 * Collectives between the ranks of one training job. Every rank calls the same collectives in the same
 * order with the same sizes (see DESIGN.md, "No hangs"). Implementations: {@link LocalCommunicator} (one
 * rank), the TCP ring (CPU), NCCL (CUDA). A collective that cannot finish within the communicator's timeout
 * throws {@link CommunicatorException} naming the rank it was waiting for; after any failure the
 * communicator is aborted and every later call throws.
 */
public interface Communicator extends AutoCloseable {

  int rank();

  int worldSize();

  /** In place: buf = sum over ranks of buf. buf is a FLOAT32 (or BFLOAT16 on GPU) tensor on this rank's device. */
  void allReduceSum(Tensor buf);

  /** In place: every rank's buf becomes root's buf. */
  void broadcast(Tensor buf, int root);

  // ---- asynchronous collectives (gradient buckets overlapping backward). The defaults are synchronous, so a
  // ---- communicator that does not override them (the TCP ring) behaves exactly as before.

  /** Whether {@link #allReduceSumAsync} really runs asynchronously (then buckets pay off). Default false. */
  default boolean supportsAsync() {
    return false;
  }

  /**
   * Starts buf = sum over ranks of buf, ordered after the work queued so far on buf's device, and returns
   * without waiting. Until {@link #joinAsync()} nothing may write buf. Default: {@link #allReduceSum}.
   */
  default void allReduceSumAsync(Tensor buf) {
    allReduceSum(buf);
  }

  /** Orders the device work queued from now on after every async collective started so far (no host wait). */
  default void joinAsync() {}

  /**
   * Waits on the host, under the communicator's timeout, until every async collective started so far has
   * finished (implies {@link #joinAsync()}); throws {@link CommunicatorException} like a blocking collective.
   */
  default void awaitAsync() {}

  // ---- in-stream collectives (Note [in-stream all-reduce] in NcclCommunicator): queued in order with the device's
  // ---- compute work, so a captured step (CUDA graph) can contain them; the host waits separately.

  /** Whether {@link #allReduceSumInStream} is available. Default false. */
  default boolean supportsInStream() {
    return false;
  }

  /**
   * Queues buf = sum over ranks of buf on the device's compute stream, in order with the work queued there
   * (before and after), and returns without waiting; {@link #markInStream} and {@link #awaitInStream} wait.
   */
  default void allReduceSumInStream(Tensor buf) {
    throw new UnsupportedOperationException(getClass().getSimpleName() + " has no in-stream all-reduce");
  }

  /** Records the point the compute stream has reached (after this step's in-stream collectives). */
  default void markInStream() {}

  /**
   * Waits on the host, under the communicator's timeout, for the marks recorded so far; {@code keepLatest}: all
   * but the latest (the step just queued), so the host waits for a step while the next is already queued.
   */
  default void awaitInStream(boolean keepLatest) {}

  /** Tears the communicator down at once (unblocks collectives in flight, on this rank). Idempotent. */
  void abort();

  /** Orderly shutdown. Idempotent. */
  @Override
  void close();
}
