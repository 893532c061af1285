package dev.sparktrainer.spark;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.Arrays;

/**
 * The driver-side endpoint of live progress: a small TCP server, one per fit, to which every rank's
 * {@link ProgressReporter} connects. Connections are authenticated with the fit's own random token
 * (challenge-response, HMAC-SHA256 over a fresh nonce; the token is never sent): a client that cannot
 * prove it holds the token is counted, logged and disconnected, and sees nothing. Events of authenticated
 * ranks go to the {@link ProgressListener}, one at a time, in each rank's order.
 *
 * <p>Progress is best effort: nothing in training waits for this server, and a rank that cannot reach it
 * trains on without reporting.
 */
public final class ProgressServer extends AuthenticatedServer {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(ProgressServer.class);

  /** Tests: also receives the events of every fit's server (set before fit, cleared after). */
  static volatile ProgressListener testListener;

  private final ProgressEndpoint endpoint;
  private final ProgressListener listener;
  private final long[] peakMemory; // guarded by lock
  private final boolean[] done; // guarded by lock

  private ProgressServer(ServerSocket server, String advertisedHost, int world, ProgressListener listener,
      Duration handshake) {
    super(server, ProgressWire.HANDSHAKE, "progress", "progress server", world, handshake);
    this.endpoint = new ProgressEndpoint(advertisedHost, port(), token());
    this.listener = listener;
    this.peakMemory = new long[world];
    Arrays.fill(peakMemory, -1);
    this.done = new boolean[world];
    startAccepting();
  }

  /**
   * Starts a server on an ephemeral port of {@code bindHost}, advertised to the ranks as
   * {@code advertisedHost}, for {@code world} ranks.
   */
  public static ProgressServer start(String bindHost, String advertisedHost, int world, ProgressListener listener)
      throws IOException {
    return start(bindHost, advertisedHost, world, listener, Duration.ofSeconds(10));
  }

  /** As {@link #start(String, String, int, ProgressListener)}; a client must authenticate within {@code handshake}. */
  static ProgressServer start(String bindHost, String advertisedHost, int world, ProgressListener listener,
      Duration handshake) throws IOException {
    return new ProgressServer(bind(bindHost, world), advertisedHost, world, listener, handshake);
  }

  /**
   * The server of one fit on this driver, showing progress with a {@link ProgressPrinter} in the mode the
   * Spark conf {@value ProgressPrinter#CONF} picks; null when that mode is off or no port could be opened
   * (logged: the fit then runs without live progress).
   */
  public static ProgressServer forDriver(org.apache.spark.SparkContext sc, int world, int batchSize) {
    org.apache.spark.SparkConf conf = sc.getConf();
    String mode = sc.getLocalProperty(ProgressPrinter.CONF); // a thread's own choice first, then the conf
    ProgressPrinter printer = ProgressPrinter.forDriver(mode != null ? mode : conf.get(ProgressPrinter.CONF, "auto"),
        world, batchSize);
    ProgressListener extra = testListener;
    if (printer.mode() == ProgressPrinter.Mode.OFF && extra == null) {
      return null;
    }
    String host = conf.get("spark.driver.host", "localhost");
    String bind = conf.get("spark.driver.bindAddress", host);
    try {
      return start(bind, host, world, extra == null ? printer : printer.andThen(extra));
    } catch (IOException | RuntimeException e) {
      LOG.warn("live progress is off: could not open the progress endpoint on " + bind + " (" + e + ")");
      return null;
    }
  }

  /**
   * After the training stage succeeded: each rank's peak device memory, waiting briefly for the last Done
   * events still in flight; null when {@code server} is null.
   */
  public static long[] peakMemoryOf(ProgressServer server) {
    if (server == null) {
      return null;
    }
    try {
      server.awaitDone(Duration.ofSeconds(2));
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    return server.peakDeviceMemory();
  }

  /** What the tasks need to connect (host, port, token). */
  public ProgressEndpoint endpoint() {
    return endpoint;
  }

  /** Each rank's peak device memory from its Done event; -1 where none arrived or the device has none. */
  public long[] peakDeviceMemory() {
    synchronized (lock) {
      return peakMemory.clone();
    }
  }

  /**
   * Waits until every rank's Done event has arrived (true), or {@code timeout} passed or the server closed
   * (false).
   */
  public boolean awaitDone(Duration timeout) throws InterruptedException {
    return awaitLocked(this::allDone, timeout);
  }

  private boolean allDone() {
    for (boolean d : done) {
      if (!d) {
        return false;
      }
    }
    return true;
  }

  @Override
  void session(int rank, int[] claims, DataInputStream in, DataOutputStream out) throws IOException {
    try {
      ProgressEvent e;
      while ((e = ProgressWire.read(in, rank)) != null) {
        deliver(e);
      }
    } catch (RuntimeException e) {
      LOG.warn("progress listener failed; rank " + rank + "'s progress is no longer shown", e);
    }
  }

  private void deliver(ProgressEvent e) {
    synchronized (lock) {
      if (isClosed()) {
        return;
      }
      if (e instanceof ProgressEvent.Done d) {
        peakMemory[d.rank()] = d.peakDeviceMemoryBytes();
        done[d.rank()] = true;
      }
      try {
        listener.accept(e);
      } finally {
        lock.notifyAll();
      }
    }
  }

  /** Closes the listener once the connections are gone (no event reaches it after). */
  @Override
  void onClose() {
    synchronized (lock) {
      listener.close();
    }
  }
}
