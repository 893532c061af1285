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

  /**
   * Queues buf = sum over ranks in order with the device's compute work: the device runs it after the compute
   * work queued before the call and before the work queued after it, and the host does not wait for it (where
   * {@link #supportsAsync()}); {@link #joinAsync()} / {@link #awaitAsync()} cover it as they cover
   * {@link #allReduceSumAsync}. Unlike that, it does not overlap compute work. Default: {@link #allReduceSum}.
   */
  default void allReduceSumInOrder(Tensor buf) {
    allReduceSum(buf);
  }

  /**
   * Starts the in-place reduce-scatter of buf, whose element count is a multiple of the world size, ordered and
   * joined as {@link #allReduceSumAsync}: afterwards rank r's slice [r n / W, (r + 1) n / W) holds the sum over ranks
   * of that slice, and the rest of buf is unspecified (Note [sharded optimizer] in train.Trainer). Default: {@link
   * #allReduceSum} (every slice summed).
   */
  default void reduceScatterSumAsync(Tensor buf) {
    allReduceSum(buf);
  }

  /**
   * Starts the in-place all-gather of buf, whose element count is a multiple of the world size, ordered and joined
   * as {@link #allReduceSumAsync}: afterwards every rank's slice r of buf holds rank r's slice r. Default: not
   * supported (only communicators with {@link #supportsAsync()} are asked).
   */
  default void allGatherAsync(Tensor buf) {
    throw new UnsupportedOperationException(getClass().getSimpleName() + " has no in-place all-gather");
  }

  /** {@link #allGatherAsync(Tensor)} of each buffer, in order (NCCL: one group, one launch). */
  default void allGatherAsync(java.util.List<? extends Tensor> bufs) {
    for (Tensor b : bufs) {
      allGatherAsync(b);
    }
  }

  /**
   * Starts the all-to-all of send into recv, ordered and joined as {@link #allReduceSumAsync}: both have n elements,
   * a multiple of the world size; chunk r of send (n / W elements from r n / W) goes to rank r, and chunk r of recv
   * receives rank r's chunk for this rank, for every r but this rank: what this rank's own chunk of recv holds
   * afterwards is unspecified (its own chunk of send is the one to read; a communicator may skip that copy). Default:
   * not supported (only communicators with {@link #supportsAsync()} and registered buffers are asked: Note
   * [copy-engine collectives] in cuda.NcclCommunicator).
   */
  default void allToAllAsync(Tensor send, Tensor recv) {
    throw new UnsupportedOperationException(getClass().getSimpleName() + " has no all-to-all");
  }

  /**
   * Registers the allocations that {@code bufs} lie in, so that {@link #allToAllAsync} and {@link #allGatherAsync}
   * between them run without the GPU's SMs (Note [copy-engine collectives] in cuda.NcclCommunicator). A collective:
   * every rank calls it, with buffers of the same sizes in the same order. Returns null when registered on every
   * rank, else why not (then this rank's later collectives do not use what it may have registered). The ranks also
   * agree there on any choice that changes which collectives {@link #allToAllAsync} makes. Default: not supported (no
   * collective).
   */
  default String registerCopyEngineBuffers(java.util.List<? extends Tensor> bufs) {
    return getClass().getSimpleName() + " has no copy-engine collectives";
  }

  /** Gives back what {@link #registerCopyEngineBuffers} registered (a collective), after the work queued on it. */
  default void releaseCopyEngineBuffers() {}

  /**
   * Whether all ranks are known to run on one host (then collectives do not cross a network). Default: only
   * when there is one rank.
   */
  default boolean allRanksOnOneHost() {
    return worldSize() == 1;
  }

  /** Orders the device work queued from now on after every async collective started so far (no host wait). */
  default void joinAsync() {}

  /**
   * Waits on the host, under the communicator's timeout, until every async collective started so far has
   * finished (implies {@link #joinAsync()}); throws {@link CommunicatorException} like a blocking collective.
   */
  default void awaitAsync() {}

  /**
   * Waits on the host, as {@link #awaitAsync()}, for the async collectives joined before the last {@code keep}
   * {@link #joinAsync()} calls; those joined by the last {@code keep} joins, and any not joined yet, may still run
   * (the trainer's lagged bucket wait: Note [bucket wait lag] in train.Trainer). keep 0 waits for every joined one.
   * Default: {@link #awaitAsync()} (nothing is left running).
   */
  default void awaitAsyncBefore(int keep) {
    awaitAsync();
  }

  /** Tears the communicator down at once (unblocks collectives in flight, on this rank). Idempotent. */
  void abort();

  /** Orderly shutdown. Idempotent. */
  @Override
  void close();
}
