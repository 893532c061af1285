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

  /** Tears the communicator down at once (unblocks collectives in flight, on this rank). Idempotent. */
  void abort();

  /** Orderly shutdown. Idempotent. */
  @Override
  void close();
}
