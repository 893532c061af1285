package dev.sparktrainer.checkpoint;

import java.io.IOException;

/**
 * A checkpoint cannot be used: the file is corrupt, truncated or not a checkpoint at all (from
 * {@link CheckpointIO}), or it does not fit the model and optimizer it is restored into (from
 * {@link Checkpoints#restore}). The message says what is wrong.
 *
 * <p>It is an {@link IOException} so that file-reading code handles it with the other I/O errors, and a
 * subclass so that callers can tell "this file is bad, try an older one" (this exception) from "the file
 * system failed" (any other {@code IOException}), which is how {@link CheckpointIO#latest} decides what to
 * skip.
 */
public class CheckpointException extends IOException {
  private static final long serialVersionUID = 1L;

  public CheckpointException(String message) {
    super(message);
  }

  public CheckpointException(String message, Throwable cause) {
    super(message, cause);
  }
}
