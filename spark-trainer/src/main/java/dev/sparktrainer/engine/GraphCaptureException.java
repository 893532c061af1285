package dev.sparktrainer.engine;

/**
 * {@link Device#captureGraph} could not record the work: none of the device work it queued ran (the
 * recording was discarded) and the device is usable as before, but the work's host code may have stopped
 * midway (the cause says where). The caller puts back what that host code left half done and runs the work
 * without recording (Note [CUDA graphs] in train.Trainer).
 */
public class GraphCaptureException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public GraphCaptureException(String message, Throwable cause) {
    super(message, cause);
  }
}
