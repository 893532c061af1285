package dev.sparktrainer.spark;

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
import java.util.Base64;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;

/**
 * What the driver's endpoints of one fit ({@link RendezvousServer}, {@link ProgressServer}) share: a TCP
 * server on an ephemeral port with its own random token, one daemon thread per connection, and the
 * {@link DriverHandshake} that every connection must pass within the handshake timeout before the subclass's
 * {@link #session} sees it. A client that fails it is counted, logged and disconnected, and sees nothing; so
 * is one beyond {@code world + }{@value #EXTRA_CONNECTIONS} open connections.
 *
 * <p>The subclass guards its state with {@link #lock}, which {@link #close} notifies; it starts the accept
 * thread with {@link #startAccepting} once its own fields are set.
 */
abstract class AuthenticatedServer implements AutoCloseable {
  /** Connections at once beyond the ranks' own (stage retries reconnect; anything more is refused). */
  static final int EXTRA_CONNECTIONS = 16;
  private static final SecureRandom RANDOM = new SecureRandom();

  private final org.slf4j.Logger log = org.slf4j.LoggerFactory.getLogger(getClass());
  private final DriverHandshake handshake;
  private final String name; // in thread names and "<name> server stopped accepting"
  private final String logName; // what the log lines about refused connections call this server
  private final ServerSocket server;
  private final String token;
  private final int handshakeMillis;
  private final Thread acceptor;
  private final Set<Socket> open = ConcurrentHashMap.newKeySet();
  private final AtomicInteger rejected = new AtomicInteger();
  /** The ranks of the fit. */
  final int world;
  /** Guards the subclass's state; notified when the server closes. */
  final Object lock = new Object();
  private volatile boolean closed;

  AuthenticatedServer(ServerSocket server, DriverHandshake handshake, String name, String logName, int world,
      Duration handshakeTimeout) {
    this.server = server;
    this.handshake = handshake;
    this.name = name;
    this.logName = logName;
    this.world = world;
    this.handshakeMillis = Math.toIntExact(handshakeTimeout.toMillis());
    byte[] secret = new byte[32];
    RANDOM.nextBytes(secret);
    this.token = Base64.getEncoder().encodeToString(secret);
    this.acceptor = new Thread(this::acceptLoop, "spark-trainer-" + name + "-accept");
    acceptor.setDaemon(true);
  }

  /** A server socket for {@code world} ranks on an ephemeral port of {@code bindHost}. */
  static ServerSocket bind(String bindHost, int world) throws IOException {
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
    return s;
  }

  /** Starts accepting; the subclass calls it last in its constructor. */
  final void startAccepting() {
    acceptor.start();
  }

  /**
   * One authenticated connection of {@code rank} (with the {@code claims} it stated in the handshake), on its
   * own thread, with no read timeout; returns when the client is done. The connection is closed afterwards.
   * An IOException while the server is open is logged (debug) as the connection's end.
   */
  abstract void session(int rank, int[] claims, DataInputStream in, DataOutputStream out) throws IOException;

  /** After {@link #close} dropped the connections, before it waits for the accept thread. */
  void onClose() {}

  /** The fit's token, which the tasks get in the endpoint. */
  final String token() {
    return token;
  }

  /** The port the server listens on. */
  final int port() {
    return server.getLocalPort();
  }

  /** Whether {@link #close} was called. */
  final boolean isClosed() {
    return closed;
  }

  /** Connections refused so far (wrong token, unknown rank, bad protocol, too many). */
  public int rejectedConnections() {
    return rejected.get();
  }

  /**
   * Waits on {@link #lock} (holding it while {@code done} is evaluated) until {@code done} holds (true), or
   * {@code timeout} passed or the server closed (false).
   */
  final boolean awaitLocked(BooleanSupplier done, Duration timeout) throws InterruptedException {
    long deadline = System.nanoTime() + timeout.toNanos();
    synchronized (lock) {
      while (!done.getAsBoolean()) {
        long left = deadline - System.nanoTime();
        if (left <= 0 || closed) {
          return false;
        }
        lock.wait(Math.max(1, left / 1_000_000));
      }
      return true;
    }
  }

  private void acceptLoop() {
    while (!closed) {
      Socket s;
      try {
        s = server.accept();
      } catch (IOException e) {
        if (!closed) {
          log.warn(name + " server stopped accepting: " + e);
        }
        return;
      }
      if (open.size() >= world + EXTRA_CONNECTIONS) {
        rejected.incrementAndGet();
        log.warn(logName + ": refused a connection from " + s.getRemoteSocketAddress() + " (too many open)");
        closeQuietly(s);
        continue;
      }
      open.add(s);
      Thread t = new Thread(() -> serve(s), "spark-trainer-" + name + "-" + s.getPort());
      t.setDaemon(true);
      t.start();
    }
  }

  private void serve(Socket s) {
    int rank = -1;
    try {
      s.setSoTimeout(handshakeMillis);
      s.setTcpNoDelay(true);
      DriverHandshake.Streams io = DriverHandshake.Streams.of(s);
      DataInputStream in = io.in();
      DataOutputStream out = io.out();
      byte[] nonce = new byte[DriverHandshake.NONCE_BYTES];
      RANDOM.nextBytes(nonce);
      out.writeInt(handshake.magic());
      out.writeInt(handshake.version());
      out.write(nonce);
      out.flush();
      int claimed = in.readInt();
      int[] claims = new int[handshake.claims()];
      boolean ok = claimed >= 0 && claimed < world;
      for (int i = 0; i < claims.length; i++) {
        claims[i] = in.readInt();
        ok &= claims[i] >= 0;
      }
      byte[] mac = new byte[DriverHandshake.MAC_BYTES];
      in.readFully(mac);
      ok = ok && MessageDigest.isEqual(handshake.mac(token, nonce, claimed, world, claims), mac);
      if (!ok) {
        rejected.incrementAndGet();
        log.warn(logName + ": rejected a connection from " + s.getRemoteSocketAddress() + " (it did not prove it "
            + "holds this fit's token)");
        out.writeByte(0);
        out.flush();
        return;
      }
      rank = claimed;
      out.writeByte(1);
      out.flush();
      s.setSoTimeout(0); // a rank sends when it gets there (data loading may take long)
      session(rank, claims, in, out);
    } catch (IOException e) {
      if (!closed) {
        if (rank < 0) {
          rejected.incrementAndGet();
        }
        log.debug(name + " connection from " + s.getRemoteSocketAddress() + " (rank " + rank + ") ended: " + e);
      }
    } finally {
      open.remove(s);
      closeQuietly(s);
    }
  }

  /** Stops accepting, wakes whoever waits on {@link #lock}, drops the connections. Idempotent. */
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
    onClose();
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
