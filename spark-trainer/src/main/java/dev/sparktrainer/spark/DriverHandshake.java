package dev.sparktrainer.spark;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * The challenge-response that opens every connection to a driver endpoint of one fit ({@link RendezvousServer},
 * {@link ProgressServer}; the server side runs in {@link AuthenticatedServer}). Big-endian, java.io.Data*:
 * <pre>
 * server -> client  int magic, int version, byte[32] nonce
 * client -> server  int rank, claims x int,
 *                   byte[32] HMAC-SHA256(token, purpose || 0 || nonce || rank || world || claims)
 * server -> client  byte 1 (accepted) | byte 0 (rejected, then the server closes)
 * </pre>
 * The token never crosses the socket. {@code claims} is how many ints a client states after its rank (the
 * rendezvous: its stage attempt; progress: none); the server accepts a rank in [0, world) and claims >= 0 only.
 *
 * @param magic the endpoint's first int
 * @param version its protocol version
 * @param purpose what the MAC is for, so that a proof for one endpoint is no proof for another
 * @param claims ints the client states after its rank
 */
record DriverHandshake(int magic, int version, String purpose, int claims) {
  static final int NONCE_BYTES = 32;
  static final int MAC_BYTES = 32;

  /** A connection's buffered streams. */
  record Streams(DataInputStream in, DataOutputStream out) {
    static Streams of(Socket s) throws IOException {
      return new Streams(new DataInputStream(new BufferedInputStream(s.getInputStream())),
          new DataOutputStream(new BufferedOutputStream(s.getOutputStream())));
    }
  }

  /** The client's proof: HMAC-SHA256(token, purpose || 0 || nonce || rank || world || claimed, as big-endian ints). */
  byte[] mac(String token, byte[] nonce, int rank, int world, int... claimed) {
    try {
      Mac m = Mac.getInstance("HmacSHA256");
      m.init(new SecretKeySpec(token.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
      m.update(purpose.getBytes(StandardCharsets.US_ASCII));
      m.update((byte) 0);
      m.update(nonce);
      ByteBuffer b = ByteBuffer.allocate(4 * (2 + claimed.length));
      b.putInt(rank).putInt(world);
      for (int v : claimed) {
        b.putInt(v);
      }
      m.update(b.array());
      return m.doFinal();
    } catch (GeneralSecurityException e) {
      throw new IllegalStateException("HmacSHA256 is not available in this JVM", e);
    }
  }

  /**
   * Client side: connects {@code s} to {@code host:port} within {@code timeoutMillis}, which also bounds every
   * read of the handshake that follows.
   */
  static Streams open(Socket s, String host, int port, int timeoutMillis) throws IOException {
    s.connect(new InetSocketAddress(host, port), timeoutMillis);
    s.setSoTimeout(timeoutMillis);
    s.setTcpNoDelay(true);
    return Streams.of(s);
  }

  /** Client side: the server's nonce, or null when the peer does not speak this magic and version. */
  byte[] readChallenge(DataInputStream in) throws IOException {
    if (in.readInt() != magic || in.readInt() != version) {
      return null;
    }
    byte[] nonce = new byte[NONCE_BYTES];
    in.readFully(nonce);
    return nonce;
  }

  /** Client side: answers {@code nonce} as {@code rank} of {@code world} stating {@code claimed}; whether accepted. */
  boolean answer(Streams io, String token, byte[] nonce, int rank, int world, int... claimed) throws IOException {
    if (claimed.length != claims) {
      throw new IllegalArgumentException("this handshake states " + claims + " claims, got " + claimed.length);
    }
    io.out().writeInt(rank);
    for (int c : claimed) {
      io.out().writeInt(c);
    }
    io.out().write(mac(token, nonce, rank, world, claimed));
    io.out().flush();
    return io.in().read() == 1;
  }
}
