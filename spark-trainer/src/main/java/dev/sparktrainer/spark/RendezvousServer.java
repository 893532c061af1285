package dev.sparktrainer.spark;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * The driver-side rendezvous of one fit: the ranks' all-gathers (the ring's peer addresses, the NCCL unique
 * id, the GPU placement check, the checkpoint choice) go through this small TCP server instead of
 * {@code BarrierTaskContext.allGather}, which costs ~1 s per call in Spark 4.1 (see SPARK-NOTES.md).
 *
 * <h2>Note [driver rendezvous]</h2>
 * Each task attempt opens one connection, proves it holds the fit's token (challenge-response, HMAC-SHA256
 * over a fresh nonce, its rank, the world size and its stage attempt; the token never crosses the socket)
 * and then sends its all-gathers on it, numbered 0, 1, 2, ... in the order the rank calls them (every rank
 * calls the same collectives in the same order). Gather number s of stage attempt a completes when all W
 * ranks of attempt a have sent theirs; each then receives the W messages by rank. The server speaks for
 * the authenticated rank only: a connection cannot post for another rank or post twice.
 *
 * <p>Nothing waits forever: a gather that is still missing ranks after the requester's timeout fails on
 * every rank waiting in it, naming the missing ranks; a request from a newer stage attempt (Spark retried
 * the stage) fails the gathers of older attempts at once; closing the server (the fit ended) fails all.
 * The rank side ({@link RendezvousClient}) also gives up when Spark kills its task.
 *
 * <p>Protocol (big-endian, java.io.Data* encoding):
 * <pre>
 * server -> client  int MAGIC, int VERSION, byte[32] nonce
 * client -> server  int rank, int attempt,
 *                   byte[32] HMAC-SHA256(token, PURPOSE || 0 || nonce || rank || world || attempt)
 * server -> client  byte 1 (accepted) | byte 0 (rejected, then the server closes)
 * then, any number of times:
 * client -> server  int seq, int timeoutMillis, int length, byte[length] message (UTF-8, at most MAX_MESSAGE_BYTES)
 * server -> client  byte OK, int world, world x (int length, bytes)  |  byte FAILED, UTF reason
 * </pre>
 */
public final class RendezvousServer extends AuthenticatedServer {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(RendezvousServer.class);
  /** The Spark conf that picks the rendezvous: {@code driver} (default) or {@code barrier} (Spark's allGather). */
  public static final String CONF = "spark.sparktrainer.rendezvous";
  static final int MAGIC = 0x53545256; // "STRV"
  static final int VERSION = 1;
  static final String PURPOSE = "spark-trainer rendezvous v1: client";
  /** The handshake: after its rank a client states its stage attempt. */
  static final DriverHandshake HANDSHAKE = new DriverHandshake(MAGIC, VERSION, PURPOSE, 1);
  static final byte OK = 1;
  static final byte FAILED = 2;
  static final int MAX_MESSAGE_BYTES = 1 << 20;

  private final RendezvousEndpoint endpoint;
  private final Map<Long, Gather> gathers = new HashMap<>(); // by (attempt, seq); guarded by lock
  private int newestAttempt = -1; // guarded by lock
  private int completed; // guarded by lock
  private int arrivals; // guarded by lock

  /** One all-gather of one stage attempt. */
  private final class Gather {
    final int attempt;
    final int seq;
    final String[] messages = new String[world];
    int arrived;
    int delivered;
    String failure;

    Gather(int attempt, int seq) {
      this.attempt = attempt;
      this.seq = seq;
    }

    List<Integer> missing() {
      List<Integer> m = new ArrayList<>();
      for (int r = 0; r < world; r++) {
        if (messages[r] == null) {
          m.add(r);
        }
      }
      return m;
    }
  }

  private RendezvousServer(ServerSocket server, String advertisedHost, int world, Duration handshake) {
    super(server, HANDSHAKE, "rendezvous", "rendezvous", world, handshake);
    this.endpoint = new RendezvousEndpoint(advertisedHost, port(), token());
    startAccepting();
  }

  /** Starts a server for {@code world} ranks on an ephemeral port of {@code bindHost}, advertised as given. */
  public static RendezvousServer start(String bindHost, String advertisedHost, int world) throws IOException {
    return start(bindHost, advertisedHost, world, Duration.ofSeconds(10));
  }

  /** As {@link #start(String, String, int)}; a client must authenticate within {@code handshake}. */
  static RendezvousServer start(String bindHost, String advertisedHost, int world, Duration handshake)
      throws IOException {
    return new RendezvousServer(bind(bindHost, world), advertisedHost, world, handshake);
  }

  /**
   * The rendezvous of one fit on this driver, on the driver's address (spark.driver.bindAddress /
   * spark.driver.host); null when {@value #CONF} is {@code barrier} or no port could be opened (logged): the
   * ranks then use {@code BarrierTaskContext.allGather}.
   */
  public static RendezvousServer forDriver(org.apache.spark.SparkContext sc, int world) {
    org.apache.spark.SparkConf conf = sc.getConf();
    String mode = conf.get(CONF, "driver").trim().toLowerCase(java.util.Locale.ROOT);
    if (mode.equals("barrier")) {
      return null;
    }
    if (!mode.equals("driver")) {
      throw new IllegalArgumentException(CONF + " must be driver or barrier, got '" + conf.get(CONF) + "'");
    }
    String host = conf.get("spark.driver.host", "localhost");
    String bind = conf.get("spark.driver.bindAddress", host);
    try {
      return start(bind, host, world);
    } catch (IOException | RuntimeException e) {
      LOG.warn("could not open the driver rendezvous on " + bind + " (" + e + "); the ranks use "
          + "BarrierTaskContext.allGather (~1 s per exchange)");
      return null;
    }
  }

  /** What the tasks need to connect (host, port, token). */
  public RendezvousEndpoint endpoint() {
    return endpoint;
  }

  /** All-gathers completed so far (every rank contributed). */
  public int completedGathers() {
    synchronized (lock) {
      return completed;
    }
  }

  /** Tests: waits until {@code n} messages in all have arrived (true), or the timeout passed (false). */
  boolean awaitArrivals(int n, Duration timeout) throws InterruptedException {
    return awaitLocked(() -> arrivals >= n, timeout);
  }

  static byte[] mac(String token, byte[] nonce, int rank, int world, int attempt) {
    return HANDSHAKE.mac(token, nonce, rank, world, attempt);
  }

  @Override
  void session(int rank, int[] claims, DataInputStream in, DataOutputStream out) throws IOException {
    int attempt = claims[0];
    while (true) {
      int seq;
      try {
        seq = in.readInt();
      } catch (java.io.EOFException end) {
        return; // the task is done with the rendezvous
      }
      int timeoutMillis = in.readInt();
      int length = in.readInt();
      if (length < 0 || length > MAX_MESSAGE_BYTES || timeoutMillis <= 0) {
        throw new IOException("rank " + rank + " sent a malformed request (length " + length + ", timeout "
            + timeoutMillis + " ms)");
      }
      byte[] msg = new byte[length];
      in.readFully(msg);
      String failure;
      List<String> all;
      try {
        all = gather(rank, attempt, seq, new String(msg, StandardCharsets.UTF_8), timeoutMillis);
        failure = null;
      } catch (RendezvousException e) {
        all = null;
        failure = e.getMessage();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      }
      if (failure != null) {
        out.writeByte(FAILED);
        out.writeUTF(failure.length() > 8000 ? failure.substring(0, 8000) : failure);
      } else {
        out.writeByte(OK);
        out.writeInt(all.size());
        for (String m : all) {
          byte[] b = m.getBytes(StandardCharsets.UTF_8);
          out.writeInt(b.length);
          out.write(b);
        }
      }
      out.flush();
    }
  }

  /** A gather that cannot complete; its message goes to the rank. */
  static final class RendezvousException extends Exception {
    private static final long serialVersionUID = 1L;

    RendezvousException(String message) {
      super(message);
    }
  }

  /** Rank {@code rank}'s part of gather {@code seq} of stage attempt {@code attempt}; blocks until all W arrived. */
  List<String> gather(int rank, int attempt, int seq, String message, int timeoutMillis)
      throws RendezvousException, InterruptedException {
    long deadline = System.nanoTime() + timeoutMillis * 1_000_000L;
    String what = "rendezvous #" + seq + " of stage attempt " + attempt;
    synchronized (lock) {
      if (isClosed()) {
        throw new RendezvousException(what + ": the fit already ended on the driver");
      }
      if (attempt < newestAttempt) {
        throw new RendezvousException(what + ": stage attempt " + newestAttempt + " already started (Spark retried "
            + "the training stage); this task attempt is stale");
      }
      if (attempt > newestAttempt) {
        for (Iterator<Gather> it = gathers.values().iterator(); it.hasNext(); ) {
          Gather old = it.next();
          old.failure = "rendezvous #" + old.seq + " of stage attempt " + old.attempt + ": stage attempt " + attempt
              + " started (Spark retried the training stage)";
          it.remove();
        }
        newestAttempt = attempt;
        lock.notifyAll();
      }
      long key = ((long) attempt << 32) | (seq & 0xffffffffL);
      Gather g = gathers.computeIfAbsent(key, k -> new Gather(attempt, seq));
      if (g.failure != null) {
        throw new RendezvousException(g.failure);
      }
      if (g.messages[rank] != null) {
        throw new RendezvousException(what + ": rank " + rank + " sent its part twice (two task attempts of one "
            + "rank in one stage attempt?)");
      }
      g.messages[rank] = message;
      g.arrived++;
      arrivals++;
      lock.notifyAll();
      if (g.arrived == world) {
        completed++;
      }
      while (g.arrived < world && g.failure == null && !isClosed()) {
        long left = deadline - System.nanoTime();
        if (left <= 0) {
          g.failure = what + ": timed out after " + timeoutMillis / 1000.0 + " s waiting for rank(s) " + g.missing()
              + " of " + world + " (they have not reached it: still loading data, stuck, or failed; their task "
              + "logs say which; a slow start needs a larger timeoutSeconds)";
          lock.notifyAll(); // the failed gather stays, so a rank that arrives later fails at once too
          break;
        }
        lock.wait(Math.max(1, left / 1_000_000));
      }
      if (g.arrived < world) {
        throw new RendezvousException(g.failure != null ? g.failure : what + ": the fit already ended on the driver");
      }
      if (++g.delivered == world) {
        gathers.remove(key);
      }
      return List.of(g.messages);
    }
  }
}
