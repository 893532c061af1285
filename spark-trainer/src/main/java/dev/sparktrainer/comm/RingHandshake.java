package dev.sparktrainer.comm;

import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Sets up one rank's two ring connections at once, on one selector: it connects to its right neighbour and
 * accepts its left neighbour, and authenticates both with {@link HmacAuth}.
 *
 * <h2>Note [ring handshake]</h2>
 * All messages have fixed sizes; nothing read from the network is used as a length.
 * <pre>
 * acceptor  -> connector  challenge  40 bytes: magic "SPTRING1", nonceA (32)
 * connector -> acceptor   response   84 bytes: magic, from (int), to (int), world (int), nonceC (32),
 *                                              HMAC(token, CONNECT, nonceA, nonceC, from, to, world)
 * acceptor  -> connector  proof      32 bytes: HMAC(token, ACCEPT, nonceA, nonceC, from, to, world)
 * </pre>
 * The acceptor takes a connection as its left link only if the magic, the three ranks (from = its left
 * neighbour, to = itself, world) and the MAC are right; anything else (garbage, a wrong token, a wrong
 * rank, a peer that closes early) is rejected, logged and closed, and the acceptor keeps waiting for the
 * real neighbour until the deadline. Several unauthenticated connections are served at once (at most
 * {@link #MAX_PENDING}; beyond that the oldest is dropped), so a silent connection cannot starve the real
 * one. The connector checks the acceptor's proof, so it never sends data to an impostor; a connection that
 * breaks before the proof is retried until the deadline (the acceptor may have dropped it), a wrong proof
 * fails at once.
 */
final class RingHandshake {
  private static final Logger LOG = LoggerFactory.getLogger(RingHandshake.class);
  static final byte[] MAGIC = "SPTRING1".getBytes(StandardCharsets.US_ASCII);
  static final int CHALLENGE_BYTES = MAGIC.length + HmacAuth.NONCE_BYTES;
  static final int RESPONSE_BYTES = MAGIC.length + 12 + HmacAuth.NONCE_BYTES + HmacAuth.MAC_BYTES;
  static final int PROOF_BYTES = HmacAuth.MAC_BYTES;
  static final int MAX_PENDING = 32;
  private static final long RETRY_MIN_NANOS = TimeUnit.MILLISECONDS.toNanos(50);
  private static final long RETRY_MAX_NANOS = TimeUnit.SECONDS.toNanos(1);

  /** The two authenticated links, non-blocking, plus how many connections were turned away. */
  record Links(SocketChannel toRight, SocketChannel fromLeft, int rejected) {}

  private final int rank;
  private final int world;
  private final int left;
  private final int right;
  private final HmacAuth auth;
  private final InetSocketAddress rightAddress;
  private final int bufferBytes;
  private int rejected;

  private RingHandshake(int rank, int world, HmacAuth auth, InetSocketAddress rightAddress, int bufferBytes) {
    this.rank = rank;
    this.world = world;
    this.left = Math.floorMod(rank - 1, world);
    this.right = (rank + 1) % world;
    this.auth = auth;
    this.rightAddress = rightAddress;
    this.bufferBytes = bufferBytes;
  }

  /**
   * Connects to the right neighbour and accepts the left one on {@code server}, both authenticated, within
   * {@code timeoutNanos}. Throws {@link CommunicatorException} naming the neighbour that could not be
   * reached or authenticated. The server socket is left open (the caller closes it).
   */
  static Links establish(int rank, int world, HmacAuth auth, ServerSocketChannel server,
      InetSocketAddress rightAddress, int bufferBytes, long timeoutNanos) {
    return new RingHandshake(rank, world, auth, rightAddress, bufferBytes).run(server, timeoutNanos);
  }

  private Links run(ServerSocketChannel server, long timeoutNanos) {
    long start = System.nanoTime();
    long deadline = start + timeoutNanos;
    List<Inbound> pending = new ArrayList<>();
    Outbound out = new Outbound();
    SocketChannel fromLeft = null;
    SocketChannel toRight = null;
    boolean ok = false;
    try (Selector sel = Selector.open()) {
      server.configureBlocking(false);
      SelectionKey serverKey = server.register(sel, SelectionKey.OP_ACCEPT);
      while (fromLeft == null || toRight == null) {
        long now = System.nanoTime();
        if (toRight == null && out.ch == null && now >= out.retryAt) {
          out.connect(sel);
        }
        if (now >= deadline) {
          throw setupTimeout(fromLeft == null, toRight == null, out, timeoutNanos);
        }
        long wait = deadline - now;
        if (toRight == null && out.ch == null) {
          wait = Math.min(wait, Math.max(0, out.retryAt - now));
        }
        sel.select(Math.max(1, TimeUnit.NANOSECONDS.toMillis(wait) + 1));
        for (Iterator<SelectionKey> it = sel.selectedKeys().iterator(); it.hasNext(); ) {
          SelectionKey k = it.next();
          it.remove();
          if (!k.isValid()) {
            continue;
          }
          if (k == serverKey) {
            SocketChannel ch;
            while (fromLeft == null && (ch = server.accept()) != null) {
              pending.add(new Inbound(ch, sel));
              if (pending.size() > MAX_PENDING) {
                reject(pending.remove(0), "too many unauthenticated connections at once; dropped the oldest");
              }
            }
          } else if (k.attachment() instanceof Inbound in) {
            if (fromLeft == null && in.step(k)) {
              k.cancel();
              pending.remove(in);
              fromLeft = in.ch;
              serverKey.cancel();
              for (Inbound other : pending) {
                reject(other, "the ring is already established");
              }
              pending.clear();
            }
          } else if (k.attachment() == out) {
            if (toRight == null && out.step(k)) {
              k.cancel();
              toRight = out.ch;
            }
          }
        }
        for (Iterator<Inbound> it = pending.iterator(); it.hasNext(); ) {
          Inbound in = it.next();
          if (in.failure != null) {
            it.remove();
            reject(in, in.failure);
          }
        }
      }
      ok = true;
      LOG.debug("rank {}: ring links up in {} ms ({} connection(s) rejected)", rank,
          TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start), rejected);
      return new Links(toRight, fromLeft, rejected);
    } catch (IOException e) {
      throw new CommunicatorException("rank " + rank + ": ring setup failed: " + e, e);
    } finally {
      for (Inbound in : pending) {
        reject(in, ok ? "the ring is already established" : "ring setup failed");
      }
      if (!ok) {
        closeQuietly(fromLeft);
        closeQuietly(toRight);
        closeQuietly(out.ch);
      }
    }
  }

  private CommunicatorException setupTimeout(boolean noLeft, boolean noRight, Outbound out, long timeoutNanos) {
    String secs = String.format("%.1f s", timeoutNanos / 1e9);
    if (noLeft) {
      return new CommunicatorException("rank " + rank + ": ring setup timed out after " + secs + ", peer rank "
          + left + ": no authenticated connection from rank " + left + " (" + rejected
          + " other connection(s) rejected)" + (noRight ? "; also could not connect to rank " + right + " at "
          + rightAddress + ": " + out.lastError : ""));
    }
    return new CommunicatorException("rank " + rank + ": ring setup timed out after " + secs + ", peer rank "
        + right + ": could not connect to rank " + right + " at " + rightAddress + ": " + out.lastError);
  }

  private void reject(Inbound in, String why) {
    rejected++;
    LOG.warn("rank {}: rejected a ring connection from {}: {}", rank, in.remote, why);
    closeQuietly(in.ch);
  }

  private void configure(SocketChannel ch) throws IOException {
    ch.configureBlocking(false);
    ch.setOption(StandardSocketOptions.TCP_NODELAY, true);
    if (bufferBytes > 0) {
      ch.setOption(StandardSocketOptions.SO_SNDBUF, bufferBytes);
      ch.setOption(StandardSocketOptions.SO_RCVBUF, bufferBytes);
    }
  }

  static void closeQuietly(AutoCloseable c) {
    if (c != null) {
      try {
        c.close();
      } catch (Exception ignored) {
        // closing on an error path: the first error is the one reported
      }
    }
  }

  /** The acceptor's side of one incoming connection. */
  private final class Inbound {
    final SocketChannel ch;
    final SocketAddress remote;
    final byte[] nonceA = HmacAuth.nonce();
    final ByteBuffer out = ByteBuffer.allocate(CHALLENGE_BYTES);
    final ByteBuffer in = ByteBuffer.allocate(RESPONSE_BYTES);
    ByteBuffer proof;
    String failure;

    Inbound(SocketChannel ch, Selector sel) {
      this.ch = ch;
      SocketAddress r;
      try {
        r = ch.getRemoteAddress();
      } catch (IOException e) {
        r = null;
      }
      this.remote = r;
      out.put(MAGIC).put(nonceA).flip();
      try {
        configure(ch);
        ch.register(sel, SelectionKey.OP_READ | SelectionKey.OP_WRITE, this);
      } catch (IOException e) {
        failure = "cannot set up the socket: " + e;
      }
    }

    /** Advances the handshake; true once the peer is authenticated and our proof is sent. */
    boolean step(SelectionKey k) {
      try {
        if (out.hasRemaining()) {
          ch.write(out);
        }
        if (proof == null) {
          int r = ch.read(in);
          if (in.position() >= MAGIC.length && !startsWithMagic(in)) {
            failure = "not a spark-trainer ring peer (bad magic)";
            return false;
          }
          if (r < 0) {
            failure = "closed the connection after " + in.position() + " of " + RESPONSE_BYTES + " bytes";
            return false;
          }
          if (!in.hasRemaining()) {
            String why = verify();
            if (why != null) {
              failure = why;
              return false;
            }
          }
        }
        if (proof != null && proof.hasRemaining()) {
          ch.write(proof);
        }
        if (proof != null && !proof.hasRemaining()) {
          return true;
        }
        k.interestOps((out.hasRemaining() || proof != null ? SelectionKey.OP_WRITE : 0)
            | (proof == null ? SelectionKey.OP_READ : 0));
        return false;
      } catch (IOException e) {
        failure = "I/O error during the handshake: " + e;
        return false;
      }
    }

    private String verify() {
      in.flip();
      in.position(MAGIC.length);
      int from = in.getInt();
      int to = in.getInt();
      int w = in.getInt();
      byte[] nonceC = new byte[HmacAuth.NONCE_BYTES];
      byte[] mac = new byte[HmacAuth.MAC_BYTES];
      in.get(nonceC).get(mac);
      // Check the MAC before trusting the ranks it covers (they are only reported after it matches).
      if (!HmacAuth.matches(auth.mac(HmacAuth.CONNECT, nonceA, nonceC, from, to, w), mac)) {
        return "authentication failed (wrong HMAC: the peer does not hold this job's token)";
      }
      if (from != left || to != rank || w != world) {
        return "authenticated, but it is rank " + from + " of " + w + " connecting to rank " + to
            + "; expected rank " + left + " of " + world + " connecting to rank " + rank;
      }
      proof = ByteBuffer.wrap(auth.mac(HmacAuth.ACCEPT, nonceA, nonceC, from, to, w));
      return null;
    }
  }

  private static boolean startsWithMagic(ByteBuffer b) {
    for (int i = 0; i < MAGIC.length; i++) {
      if (b.get(i) != MAGIC[i]) {
        return false;
      }
    }
    return true;
  }

  /** The connector's side: connect (with retries), answer the challenge, check the proof. */
  private final class Outbound {
    SocketChannel ch;
    long retryAt;
    long backoff = RETRY_MIN_NANOS;
    String lastError = "no connection attempt yet";
    final byte[] nonceC = HmacAuth.nonce();
    ByteBuffer in;
    ByteBuffer out;
    byte[] expectedProof;

    void connect(Selector sel) {
      in = ByteBuffer.allocate(CHALLENGE_BYTES);
      out = null;
      expectedProof = null;
      try {
        ch = SocketChannel.open();
        configure(ch);
        if (ch.connect(rightAddress)) {
          ch.register(sel, SelectionKey.OP_READ, this);
        } else {
          ch.register(sel, SelectionKey.OP_CONNECT, this);
        }
      } catch (IOException e) {
        retryLater(e);
      }
    }

    private void retryLater(Exception e) {
      lastError = e.toString();
      LOG.debug("rank {}: connecting to rank {} at {} failed ({}); retrying", rank, right, rightAddress, e);
      closeQuietly(ch);
      ch = null;
      retryAt = System.nanoTime() + backoff;
      backoff = Math.min(RETRY_MAX_NANOS, backoff * 2);
    }

    /** Advances the handshake; true once the acceptor proved it holds the token. */
    boolean step(SelectionKey k) {
      try {
        if (k.isConnectable()) {
          if (ch.finishConnect()) {
            k.interestOps(SelectionKey.OP_READ);
          }
          return false;
        }
        if (out == null) {
          if (ch.read(in) < 0) {
            throw new EOFException("rank " + right + " closed the connection before its challenge");
          }
          if (in.position() >= MAGIC.length && !startsWithMagic(in)) {
            throw new CommunicatorException("rank " + rank + ": ring setup failed, peer rank " + right
                + ": the process at " + rightAddress + " is not a spark-trainer ring peer (bad magic)");
          }
          if (in.hasRemaining()) {
            return false;
          }
          byte[] nonceA = Arrays.copyOfRange(in.array(), MAGIC.length, CHALLENGE_BYTES);
          out = ByteBuffer.allocate(RESPONSE_BYTES);
          out.put(MAGIC).putInt(rank).putInt(right).putInt(world).put(nonceC)
              .put(auth.mac(HmacAuth.CONNECT, nonceA, nonceC, rank, right, world)).flip();
          expectedProof = auth.mac(HmacAuth.ACCEPT, nonceA, nonceC, rank, right, world);
          in = ByteBuffer.allocate(PROOF_BYTES);
        }
        if (out.hasRemaining()) {
          ch.write(out);
          if (out.hasRemaining()) {
            k.interestOps(SelectionKey.OP_WRITE);
            return false;
          }
          k.interestOps(SelectionKey.OP_READ);
        }
        if (ch.read(in) < 0) {
          throw new EOFException("rank " + right + " closed the connection before its proof "
              + "(it rejected our credentials: a different job token?)");
        }
        if (in.hasRemaining()) {
          return false;
        }
        if (!HmacAuth.matches(expectedProof, in.array())) {
          throw new CommunicatorException("rank " + rank + ": ring setup failed, peer rank " + right
              + ": the process at " + rightAddress + " failed authentication (it does not hold this job's token)");
        }
        return true;
      } catch (IOException e) {
        k.cancel();
        retryLater(e);
        return false;
      }
    }
  }
}
