package dev.sparktrainer.comm;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * HMAC-SHA256 over the job token, for the ring's challenge-response handshake (see {@link RingHandshake}).
 * A MAC binds a purpose label (so the connector's answer can never be replayed as the acceptor's proof),
 * both sides' fresh nonces and the (from, to, world) ranks of the connection.
 */
final class HmacAuth {
  static final int NONCE_BYTES = 32;
  static final int MAC_BYTES = 32;
  static final String CONNECT = "spark-trainer ring v1: connector";
  static final String ACCEPT = "spark-trainer ring v1: acceptor";

  private static final SecureRandom RANDOM = new SecureRandom();
  private final SecretKeySpec key;

  HmacAuth(String jobToken) {
    if (jobToken == null || jobToken.isEmpty()) {
      throw new IllegalArgumentException("the job token is empty: ring connections cannot be authenticated "
          + "(WorkerContext.jobToken() must return the job's random secret)");
    }
    this.key = new SecretKeySpec(jobToken.getBytes(StandardCharsets.UTF_8), "HmacSHA256");
  }

  /** A fresh random nonce. */
  static byte[] nonce() {
    byte[] n = new byte[NONCE_BYTES];
    RANDOM.nextBytes(n);
    return n;
  }

  /** HMAC(token, purpose || 0 || nonceA || nonceC || from || to || world), 32 bytes. */
  byte[] mac(String purpose, byte[] acceptorNonce, byte[] connectorNonce, int from, int to, int world) {
    try {
      Mac m = Mac.getInstance("HmacSHA256");
      m.init(key);
      m.update(purpose.getBytes(StandardCharsets.US_ASCII));
      m.update((byte) 0);
      m.update(acceptorNonce);
      m.update(connectorNonce);
      m.update(ByteBuffer.allocate(12).putInt(from).putInt(to).putInt(world).array());
      return m.doFinal();
    } catch (GeneralSecurityException e) {
      throw new IllegalStateException("HmacSHA256 is not available in this JVM", e);
    }
  }

  /** Constant-time comparison. */
  static boolean matches(byte[] expected, byte[] actual) {
    return MessageDigest.isEqual(expected, actual);
  }
}
