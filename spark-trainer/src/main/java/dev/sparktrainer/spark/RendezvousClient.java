package dev.sparktrainer.spark;

import dev.sparktrainer.comm.CommunicatorException;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.BooleanSupplier;

/**
 * A rank's side of the driver rendezvous (Note [driver rendezvous] in {@link RendezvousServer}): one
 * authenticated connection per task attempt, over which the rank's all-gathers run in order. Every wait
 * is bounded: the server answers a gather within the timeout the rank gives it (with the W messages or
 * with an error naming the missing ranks), and while waiting the rank checks every {@link #POLL_MILLIS} ms
 * whether Spark killed its task (a failed rank fails the stage, and Spark then kills the others).
 */
final class RendezvousClient implements AutoCloseable {
  /** How often a waiting rank checks whether its task was killed. */
  static final int POLL_MILLIS = 200;
  /** How long past its timeout a rank waits for the driver's answer before it gives up on the driver. */
  static final int GRACE_MILLIS = 10_000;
  static final int CONNECT_MILLIS = 10_000;

  private final int rank;
  private final int world;
  private final RendezvousEndpoint endpoint;
  private final Socket socket;
  private final DataInputStream in;
  private final DataOutputStream out;
  private int seq;
  private String broken; // why the connection can no longer be used; null while it can

  private RendezvousClient(int rank, int world, RendezvousEndpoint endpoint, Socket socket,
      DriverHandshake.Streams io) {
    this.rank = rank;
    this.world = world;
    this.endpoint = endpoint;
    this.socket = socket;
    this.in = io.in();
    this.out = io.out();
  }

  /**
   * Connects rank {@code rank} of {@code world} (stage attempt {@code attempt}) to the driver and
   * authenticates. Throws {@link CommunicatorException} saying what to check when the driver cannot be
   * reached or refuses the rank.
   */
  static RendezvousClient connect(RendezvousEndpoint endpoint, int rank, int world, int attempt) {
    Socket s = new Socket();
    boolean ok = false;
    try {
      DriverHandshake.Streams io = DriverHandshake.open(s, endpoint.host(), endpoint.port(), CONNECT_MILLIS);
      byte[] nonce = RendezvousServer.HANDSHAKE.readChallenge(io.in());
      if (nonce == null) {
        throw new IOException("the process at " + endpoint + " is not this spark-trainer version's rendezvous");
      }
      if (!RendezvousServer.HANDSHAKE.answer(io, endpoint.token(), nonce, rank, world, attempt)) {
        throw new IOException("the driver's rendezvous rejected this rank's token");
      }
      ok = true;
      return new RendezvousClient(rank, world, endpoint, s, io);
    } catch (IOException e) {
      throw new CommunicatorException("rank " + rank + ": cannot reach the driver's rendezvous at " + endpoint + " ("
          + e + "). The executors must be able to connect to the driver's address on ephemeral ports (as for "
          + "live progress); if they cannot, set --conf " + RendezvousServer.CONF + "=barrier to meet through "
          + "BarrierTaskContext.allGather instead (~1 s per exchange)", e);
    } finally {
      if (!ok) {
        try {
          s.close();
        } catch (IOException ignored) {
          // the connect error is the one reported
        }
      }
    }
  }

  /**
   * This rank's next all-gather: sends {@code message}, returns every rank's message ordered by rank. Fails
   * with {@link CommunicatorException} when the gather cannot complete within {@code timeout} (naming the
   * missing ranks), when {@code killed} turns true while waiting, or when the driver goes away.
   */
  List<String> allGather(String message, Duration timeout, BooleanSupplier killed) {
    int mySeq = seq++;
    String what = "rank " + rank + ": rendezvous #" + mySeq;
    if (broken != null) {
      throw new CommunicatorException(what + ": an earlier rendezvous of this task failed (" + broken + ")");
    }
    byte[] msg = message.getBytes(StandardCharsets.UTF_8);
    if (msg.length > RendezvousServer.MAX_MESSAGE_BYTES) {
      throw new IllegalArgumentException(what + ": message of " + msg.length + " bytes exceeds "
          + RendezvousServer.MAX_MESSAGE_BYTES);
    }
    // Any failure below leaves the stream mid-answer: the connection is then not used again.
    broken = "it did not complete";
    int timeoutMillis = (int) Math.min(Integer.MAX_VALUE, Math.max(1, timeout.toMillis()));
    long deadline = System.nanoTime() + (timeoutMillis + (long) GRACE_MILLIS) * 1_000_000L;
    try {
      out.writeInt(mySeq);
      out.writeInt(timeoutMillis);
      out.writeInt(msg.length);
      out.write(msg);
      out.flush();
      int status = -1;
      socket.setSoTimeout(POLL_MILLIS);
      while (status < 0) {
        try {
          status = in.readUnsignedByte();
        } catch (SocketTimeoutException poll) {
          if (killed.getAsBoolean()) {
            throw new CommunicatorException(what + ": the task was killed while waiting for the other ranks");
          }
          if (System.nanoTime() > deadline) {
            throw new CommunicatorException(what + ": the driver's rendezvous at " + endpoint + " did not answer "
                + "within " + (timeoutMillis + GRACE_MILLIS) / 1000 + " s");
          }
        }
      }
      socket.setSoTimeout(CONNECT_MILLIS); // the rest of the answer follows at once
      if (status == RendezvousServer.FAILED) {
        throw new CommunicatorException("rank " + rank + ": " + in.readUTF());
      }
      if (status != RendezvousServer.OK) {
        throw new IOException("unknown answer " + status);
      }
      int n = in.readInt();
      if (n != world) {
        throw new IOException("the answer holds " + n + " messages for a world of " + world);
      }
      List<String> all = new ArrayList<>(n);
      for (int r = 0; r < n; r++) {
        int len = in.readInt();
        if (len < 0 || len > RendezvousServer.MAX_MESSAGE_BYTES) {
          throw new IOException("message length " + len);
        }
        byte[] b = new byte[len];
        in.readFully(b);
        all.add(new String(b, StandardCharsets.UTF_8));
      }
      broken = null;
      return all;
    } catch (IOException e) {
      throw new CommunicatorException(what + ": the connection to the driver's rendezvous at " + endpoint
          + " broke (" + e + "); did the fit end or the driver fail?", e);
    }
  }

  @Override
  public void close() {
    try {
      socket.close();
    } catch (IOException ignored) {
      // nothing to report
    }
  }
}
