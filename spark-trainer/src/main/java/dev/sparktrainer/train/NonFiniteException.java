package dev.sparktrainer.train;

/** Gradients became NaN or infinite; the message names the step and what to change. */
public class NonFiniteException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public NonFiniteException(String message) {
    super(message);
  }
}
