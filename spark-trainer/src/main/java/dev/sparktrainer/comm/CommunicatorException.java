package dev.sparktrainer.comm;

/** A collective failed or timed out; the message names the rank and the operation. */
public class CommunicatorException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public CommunicatorException(String message) {
    super(message);
  }

  public CommunicatorException(String message, Throwable cause) {
    super(message, cause);
  }
}
