package dev.sparktrainer.engine;

/**
 * The device work of one piece of host code, recorded once by {@link Device#captureGraph} and queued again by
 * {@link #replay()} in one call (a CUDA graph on the GPU): the same ops, on the same memory, with the same
 * arguments, without running the host code that first queued them. Used by the trainer for static training
 * steps (Note [CUDA graphs] in train.Trainer).
 *
 * <p>One owner closes it (the trainer, at the end of {@code fit}); the device closes the ones still open when
 * it closes. Close is idempotent; replay after close throws {@link IllegalStateException}.
 */
public interface StepGraph extends AutoCloseable {

  /**
   * Queues the recorded work again, in order after the work queued so far (no host wait). Returns false, and
   * queues nothing, when the device can no longer replay it faithfully (memory the graph uses was freed since
   * the capture, or device state that the capture depended on changed); the caller then runs the host code
   * instead.
   */
  boolean replay();

  /** Frees the graph. Idempotent. */
  @Override
  void close();
}
