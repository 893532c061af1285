package dev.sparktrainer.api;

/**
 * A fit failed after Spark's retries of the training stage were used up. The message names the failing
 * rank and its error (e.g. the rank a collective waited for); the cause is Spark's own exception.
 */
public class TrainingException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public TrainingException(String message, Throwable cause) {
    super(message, cause);
  }
}
