package dev.sparktrainer.spark;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.Arrays;
import java.util.Base64;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

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
public final class ProgressServer implements AutoCloseable {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(ProgressServer.class);
  private static final SecureRandom RANDOM = new SecureRandom();
  /** Connections at once beyond the ranks' own (stage retries reconnect; anything more is refused). */
  private static final int EXTRA_CONNECTIONS = 16;

  /** Tests: also receives the events of every fit's server (set before fit, cleared after). */
  static volatile ProgressListener testListener;

  private final ServerSocket server;
  private final ProgressEndpoint endpoint;
  private final int world;
  private final ProgressListener listener;
  private final int handshakeMillis;
  private final Thread acceptor;
  private final Set<Socket> open = ConcurrentHashMap.newKeySet();
  private final AtomicInteger rejected = new AtomicInteger();
  private final Object lock = new Object();
  private final long[] peakMemory;
  private final boolean[] done;
  private volatile boolean closed;

  private ProgressServer(ServerSocket server, String advertisedHost, int world, ProgressListener listener,
      int handshakeMillis) {
    this.server = server;
    byte[] secret = new byte[32];
    RANDOM.nextBytes(secret);
    this.endpoint = new ProgressEndpoint(advertisedHost, server.getLocalPort(),
        Base64.getEncoder().encodeToString(secret));
    this.world = world;
    this.listener = listener;
    this.handshakeMillis = handshakeMillis;
    this.peakMemory = new long[world];
    Arrays.fill(peakMemory, -1);
    this.done = new boolean[world];
    this.acceptor = new Thread(this::acceptLoop, "spark-trainer-progress-accept");
    acceptor.setDaemon(true);
    acceptor.start();
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
    if (world <= 0) {
      throw new IllegalArgumentException("world size must be > 0, got " + world);
    }
    ServerSocket s = new ServerSocket();
    try {
      s.bind(new InetSocketAddress(InetAddress.getByName(bindHost), 0), world + EXTRA_CONNECTIONS);
    } catch (IOException e) {
      s.close();
      throw e;
    }
    return new ProgressServer(s, advertisedHost, world, listener, Math.toIntExact(handshake.toMillis()));
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

  /** Connections refused so far (wrong token, unknown rank, bad protocol, too many). */
  public int rejectedConnections() {
    return rejected.get();
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
    long deadline = System.nanoTime() + timeout.toNanos();
    synchronized (lock) {
      while (!allDone()) {
        long left = deadline - System.nanoTime();
        if (left <= 0 || closed) {
          return false;
        }
        lock.wait(Math.max(1, left / 1_000_000));
      }
      return true;
    }
  }

  private boolean allDone() {
    for (boolean d : done) {
      if (!d) {
        return false;
      }
    }
    return true;
  }

  private void acceptLoop() {
    while (!closed) {
      Socket s;
      try {
        s = server.accept();
      } catch (IOException e) {
        if (!closed) {
          LOG.warn("progress server stopped accepting: " + e);
        }
        return;
      }
      if (open.size() >= world + EXTRA_CONNECTIONS) {
        rejected.incrementAndGet();
        LOG.warn("progress server: refused a connection from " + s.getRemoteSocketAddress() + " (too many open)");
        closeQuietly(s);
        continue;
      }
      open.add(s);
      Thread t = new Thread(() -> serve(s), "spark-trainer-progress-" + s.getPort());
      t.setDaemon(true);
      t.start();
    }
  }

  private void serve(Socket s) {
    int rank = -1;
    try {
      s.setSoTimeout(handshakeMillis);
      s.setTcpNoDelay(true);
      DataInputStream in = new DataInputStream(new BufferedInputStream(s.getInputStream()));
      DataOutputStream out = new DataOutputStream(new BufferedOutputStream(s.getOutputStream()));
      byte[] nonce = new byte[ProgressWire.NONCE_BYTES];
      RANDOM.nextBytes(nonce);
      out.writeInt(ProgressWire.MAGIC);
      out.writeInt(ProgressWire.VERSION);
      out.write(nonce);
      out.flush();
      int claimed = in.readInt();
      byte[] mac = new byte[ProgressWire.MAC_BYTES];
      in.readFully(mac);
      boolean ok = claimed >= 0 && claimed < world
          && MessageDigest.isEqual(ProgressWire.mac(endpoint.token(), nonce, claimed, world), mac);
      if (!ok) {
        rejected.incrementAndGet();
        LOG.warn("progress server: rejected a connection from " + s.getRemoteSocketAddress() + " (it did not "
            + "prove it holds this fit's token)");
        out.writeByte(0);
        out.flush();
        return;
      }
      rank = claimed;
      out.writeByte(1);
      out.flush();
      s.setSoTimeout(0);
      ProgressEvent e;
      while ((e = ProgressWire.read(in, rank)) != null) {
        deliver(e);
      }
    } catch (IOException e) {
      if (!closed) {
        if (rank < 0) {
          rejected.incrementAndGet();
        }
        LOG.debug("progress connection from " + s.getRemoteSocketAddress() + " ended: " + e);
      }
    } catch (RuntimeException e) {
      LOG.warn("progress listener failed; rank " + rank + "'s progress is no longer shown", e);
    } finally {
      open.remove(s);
      closeQuietly(s);
    }
  }

  private void deliver(ProgressEvent e) {
    synchronized (lock) {
      if (closed) {
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

  /** Stops accepting, drops open connections. Idempotent. */
  @Override
  public void close() {
    synchronized (lock) {
      if (closed) {
        return;
      }
      closed = true;
      lock.notifyAll();
    }
    closeQuietly(server);
    for (Socket s : open) {
      closeQuietly(s);
    }
    synchronized (lock) {
      listener.close();
    }
    try {
      acceptor.join(2000);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  private static void closeQuietly(AutoCloseable c) {
    try {
      c.close();
    } catch (Exception ignored) {
      // closing
    }
  }
}
