package dev.sparktrainer.spark;

/**
 * Receives the ranks' progress events on the driver. {@link ProgressServer} calls it from its connection
 * threads, one event at a time (never concurrently), in the order each rank sent them.
 */
@FunctionalInterface
public interface ProgressListener {
  void accept(ProgressEvent event);

  /** The server closed: no more events (e.g. end a progress bar's line). */
  default void close() {}

  /** Calls this listener, then {@code next}. */
  default ProgressListener andThen(ProgressListener next) {
    ProgressListener first = this;
    return new ProgressListener() {
      @Override
      public void accept(ProgressEvent e) {
        first.accept(e);
        next.accept(e);
      }

      @Override
      public void close() {
        first.close();
        next.close();
      }
    };
  }
}
