package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The driver endpoints' handshake ({@link DriverHandshake}) against clients written here byte by byte from
 * the documented protocol, so that the shared server and client code cannot drift from it together.
 */
@Timeout(60)
class DriverHandshakeTest {
  /** HMAC-SHA256(token, purpose || 0 || nonce || ints), written out independently of the code under test. */
  private static byte[] referenceMac(String token, String purpose, byte[] nonce, int... ints) throws Exception {
    Mac m = Mac.getInstance("HmacSHA256");
    m.init(new SecretKeySpec(token.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
    ByteBuffer b = ByteBuffer.allocate(purpose.length() + 1 + nonce.length + 4 * ints.length);
    b.put(purpose.getBytes(StandardCharsets.US_ASCII)).put((byte) 0).put(nonce);
    for (int v : ints) {
      b.putInt(v);
    }
    return m.doFinal(b.array());
  }

  /** Reads the server's challenge, checking its magic and version; the nonce. */
  private static byte[] challenge(DataInputStream in, int magic, int version) throws Exception {
    assertEquals(magic, in.readInt());
    assertEquals(version, in.readInt());
    byte[] nonce = new byte[32];
    in.readFully(nonce);
    return nonce;
  }

  @Test
  void macIsTheDocumentedHmac() throws Exception {
    byte[] nonce = new byte[DriverHandshake.NONCE_BYTES];
    for (int i = 0; i < nonce.length; i++) {
      nonce[i] = (byte) (i * 7 + 1);
    }
    assertArrayEquals(referenceMac("tok", RendezvousServer.PURPOSE, nonce, 2, 4, 3),
        RendezvousServer.mac("tok", nonce, 2, 4, 3));
    assertArrayEquals(referenceMac("tok", ProgressWire.PURPOSE, nonce, 1, 4),
        ProgressWire.mac("tok", nonce, 1, 4));
    assertEquals(DriverHandshake.MAC_BYTES, ProgressWire.mac("tok", nonce, 1, 4).length);
  }

  @Test
  void aHandWrittenRendezvousClientIsAcceptedAndGathers() throws Exception {
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", 1);
        Socket s = new Socket("127.0.0.1", server.endpoint().port())) {
      DataInputStream in = new DataInputStream(s.getInputStream());
      DataOutputStream out = new DataOutputStream(s.getOutputStream());
      byte[] nonce = challenge(in, RendezvousServer.MAGIC, RendezvousServer.VERSION);
      out.writeInt(0); // rank
      out.writeInt(0); // stage attempt
      out.write(referenceMac(server.endpoint().token(), RendezvousServer.PURPOSE, nonce, 0, 1, 0));
      out.flush();
      assertEquals(1, in.read(), "the server must accept the documented handshake");
      byte[] msg = "hello".getBytes(StandardCharsets.UTF_8);
      out.writeInt(0); // seq
      out.writeInt(5000); // timeout ms
      out.writeInt(msg.length);
      out.write(msg);
      out.flush();
      assertEquals(RendezvousServer.OK, in.readByte());
      assertEquals(1, in.readInt());
      byte[] back = new byte[in.readInt()];
      in.readFully(back);
      assertEquals("hello", new String(back, StandardCharsets.UTF_8));
      assertEquals(0, server.rejectedConnections());
      assertEquals(1, server.completedGathers());
    }
  }

  @Test
  void aNegativeStageAttemptIsRejectedEvenWithTheRightMac() throws Exception {
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", 1);
        Socket s = new Socket("127.0.0.1", server.endpoint().port())) {
      DataInputStream in = new DataInputStream(s.getInputStream());
      DataOutputStream out = new DataOutputStream(s.getOutputStream());
      byte[] nonce = challenge(in, RendezvousServer.MAGIC, RendezvousServer.VERSION);
      out.writeInt(0);
      out.writeInt(-1);
      out.write(referenceMac(server.endpoint().token(), RendezvousServer.PURPOSE, nonce, 0, 1, -1));
      out.flush();
      assertEquals(0, in.read(), "the server must answer 'rejected'");
      assertEquals(-1, in.read(), "the server must close the connection");
      assertEquals(1, server.rejectedConnections());
    }
  }

  @Test
  void aHandWrittenProgressClientIsAcceptedAndHeardAsItsRank() throws Exception {
    LinkedBlockingQueue<ProgressEvent> seen = new LinkedBlockingQueue<>();
    try (ProgressServer server = ProgressServer.start("127.0.0.1", "127.0.0.1", 2, seen::add);
        Socket s = new Socket("127.0.0.1", server.endpoint().port())) {
      DataInputStream in = new DataInputStream(s.getInputStream());
      DataOutputStream out = new DataOutputStream(s.getOutputStream());
      byte[] nonce = challenge(in, ProgressWire.MAGIC, ProgressWire.VERSION);
      out.writeInt(1); // rank; no claims follow
      out.write(referenceMac(server.endpoint().token(), ProgressWire.PURPOSE, nonce, 1, 2));
      out.flush();
      assertEquals(1, in.read(), "the server must accept the documented handshake");
      out.write(ProgressWire.encode(new ProgressEvent.Done(0, 123, "dev"))); // the server attaches rank 1
      out.flush();
      ProgressEvent e = seen.poll(20, TimeUnit.SECONDS);
      assertTrue(e instanceof ProgressEvent.Done, "got " + e);
      assertEquals(1, ((ProgressEvent.Done) e).rank());
      assertEquals(123, server.peakDeviceMemory()[1]);
      assertEquals(0, server.rejectedConnections());
      assertFalse(server.awaitDone(Duration.ofMillis(1)), "rank 0 never reported");
    }
  }
}
