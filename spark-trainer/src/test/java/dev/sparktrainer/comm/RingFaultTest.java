package dev.sparktrainer.comm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.cpu.CpuTensor;
import dev.sparktrainer.engine.DType;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

/** The ring under attack and under failure: rejected connections, a stalled rank, abort(). */
class RingFaultTest {

  /** A WorkerContext that lets the test act on the published ring addresses before a rank sees them. */
  static final class HookedContext implements WorkerContext {
    interface Hook {
      List<String> apply(WorkerContext ctx, List<String> addresses) throws Exception;
    }

    final WorkerContext inner;
    final Hook hook;

    HookedContext(WorkerContext inner, Hook hook) {
      this.inner = inner;
      this.hook = hook;
    }

    @Override
    public int rank() {
      return inner.rank();
    }

    @Override
    public int worldSize() {
      return inner.worldSize();
    }

    @Override
    public int gpu() {
      return inner.gpu();
    }

    @Override
    public String jobToken() {
      return inner.jobToken();
    }

    @Override
    public List<String> allGather(String message) {
      List<String> all = inner.allGather(message);
      try {
        return hook.apply(inner, all);
      } catch (Exception e) {
        throw new AssertionError("test hook failed", e);
      }
    }
  }

  static InetSocketAddress address(List<String> all, int r) {
    return RingCommunicator.parseAddress(all, all.size(), r, -1);
  }

  /** Reads until the peer closes or resets the connection; returns the bytes read. Fails on a timeout. */
  static int readUntilClosed(Socket s) throws IOException {
    s.setSoTimeout(20_000);
    InputStream in = s.getInputStream();
    byte[] buf = new byte[256];
    int total = 0;
    try {
      int r;
      while ((r = in.read(buf)) >= 0) {
        total += r;
      }
    } catch (SocketTimeoutException e) {
      fail("the rank did not close a connection that failed authentication");
    } catch (SocketException e) {
      // reset: the rank closed while our bytes were unread; that is a rejection too
    }
    return total;
  }

  /** Speaks the handshake with the given token and claimed ranks; returns the bytes that came after the response. */
  static int handshakeAs(InetSocketAddress target, String token, int from, int to, int world) throws IOException {
    try (Socket s = new Socket()) {
      s.connect(target, 10_000);
      s.setSoTimeout(20_000);
      DataInputStream in = new DataInputStream(s.getInputStream());
      byte[] challenge = new byte[RingHandshake.CHALLENGE_BYTES];
      in.readFully(challenge);
      byte[] nonceA = java.util.Arrays.copyOfRange(challenge, RingHandshake.MAGIC.length, challenge.length);
      byte[] nonceC = HmacAuth.nonce();
      ByteBuffer resp = ByteBuffer.allocate(RingHandshake.RESPONSE_BYTES);
      resp.put(RingHandshake.MAGIC).putInt(from).putInt(to).putInt(world).put(nonceC)
          .put(new HmacAuth(token).mac(HmacAuth.CONNECT, nonceA, nonceC, from, to, world));
      s.getOutputStream().write(resp.array());
      return readUntilClosed(s);
    }
  }

  @ParameterizedTest(name = "W={0}")
  @ValueSource(ints = {2, 3})
  @Timeout(value = 120, unit = TimeUnit.SECONDS)
  void connectionsWithoutTheTokenAreRejectedAndTrainingContinues(int world) {
    int victim = 1;
    int attacker = 0; // the victim's left neighbour: its real connection waits until the attack is over
    List<Socket> silent = new ArrayList<>();
    List<Integer> rejected = LocalLauncher.run(world, 0, 100, base -> {
      WorkerContext ctx = new HookedContext(base, (c, all) -> {
        if (c.rank() == attacker) {
          InetSocketAddress target = address(all, victim);
          // 1. A connection that sends garbage.
          try (Socket s = new Socket()) {
            s.connect(target, 10_000);
            s.getOutputStream().write("GET / HTTP/1.1\r\nHost: x\r\n\r\n".getBytes(StandardCharsets.US_ASCII));
            int got = readUntilClosed(s);
            assertTrue(got <= RingHandshake.CHALLENGE_BYTES, "garbage got " + got + " bytes back");
          }
          // 2. The protocol with a wrong token: no proof comes back, the connection is closed.
          assertEquals(0, handshakeAs(target, "not-the-job-token", attacker, victim, world));
          // 3. The right token but claiming to be another rank.
          assertEquals(0, handshakeAs(target, c.jobToken(), victim == 1 ? world - 1 : 0, victim, world + 1));
          // 4. A silent connection held open through the setup: it must not block the real neighbour.
          Socket s = new Socket();
          s.connect(target, 10_000);
          synchronized (silent) {
            silent.add(s);
          }
        }
        return all;
      });
      try (CpuDevice d = new CpuDevice(); RingCommunicator comm = RingTestKit.open(ctx, Duration.ofSeconds(30))) {
        // A few training-style steps: gradients all-reduced and averaged.
        for (int step = 0; step < 5; step++) {
          int n = 10_000 + step;
          CpuTensor g = RingTestKit.viewWith(d, RingTestKit.input(step, ctx.rank(), n));
          comm.allReduceSum(g);
          float[] got = RingTestKit.contents(g);
          for (int j = 0; j < n; j += 97) {
            double want = 0;
            for (int r = 0; r < world; r++) {
              want += RingTestKit.input(step, r, n)[j];
            }
            assertEquals(want, got[j], 1e-5, "step " + step + " element " + j);
          }
        }
        return comm.rejectedConnections();
      }
    });
    for (Socket s : silent) {
      RingHandshake.closeQuietly(s);
    }
    assertEquals(4, rejected.get(victim), "garbage, wrong token, wrong rank and the silent connection");
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void theConnectorRejectsAnAcceptorWithoutTheToken() throws Exception {
    try (ServerSocket impostor = new ServerSocket(0, 5, InetAddress.getLoopbackAddress())) {
      Thread fake = new Thread(() -> {
        try (Socket s = impostor.accept()) {
          s.setSoTimeout(20_000);
          ByteBuffer ch = ByteBuffer.allocate(RingHandshake.CHALLENGE_BYTES).put(RingHandshake.MAGIC)
              .put(HmacAuth.nonce());
          s.getOutputStream().write(ch.array());
          new DataInputStream(s.getInputStream()).readFully(new byte[RingHandshake.RESPONSE_BYTES]);
          s.getOutputStream().write(HmacAuth.nonce()); // a "proof" without the token
          readUntilClosed(s);
        } catch (IOException ignored) {
          // the test asserts on the rank's side
        }
      });
      fake.setDaemon(true);
      fake.start();
      String fakeAddress = RingCommunicator.ADDRESS_PREFIX + "127.0.0.1:" + impostor.getLocalPort();
      List<String> messages = LocalLauncher.run(2, 0, 50, base -> {
        WorkerContext ctx = new HookedContext(base, (c, all) -> {
          if (c.rank() != 0) {
            return all;
          }
          List<String> forged = new ArrayList<>(all);
          forged.set(1, fakeAddress);
          return forged;
        });
        return assertThrows(CommunicatorException.class, () -> RingTestKit.open(ctx, Duration.ofSeconds(3)))
            .getMessage();
      });
      assertTrue(messages.get(0).contains("peer rank 1") && messages.get(0).contains("failed authentication"),
          messages.get(0));
      assertTrue(messages.get(1).contains("peer rank 0") && messages.get(1).contains("timed out"), messages.get(1));
    }
  }

  @ParameterizedTest(name = "W={0}, rank {1} stalls, {2} floats")
  @CsvSource({"2, 1, 1000", "3, 1, 1000", "4, 2, 1000003", "4, 0, 7", "4, 1, 16000000"})
  @Timeout(value = 120, unit = TimeUnit.SECONDS)
  void aStalledRankIsNamedByEveryOtherRankWithinTheTimeout(int world, int stalled, int n) {
    Duration timeout = Duration.ofSeconds(2);
    CountDownLatch othersDone = new CountDownLatch(world - 1);
    List<Object[]> outcome = LocalLauncher.run(world, 0, 100, ctx -> {
      try (CpuDevice d = new CpuDevice(); RingCommunicator comm = RingTestKit.open(ctx, timeout)) {
        comm.allReduceSum(d.allocate(DType.FLOAT32, n)); // everyone is up
        if (ctx.rank() == stalled) {
          // Stop participating until the others have given up.
          assertTrue(othersDone.await(60, TimeUnit.SECONDS), "the other ranks hung");
          return null;
        }
        try {
          CpuTensor t = d.allocate(DType.FLOAT32, n);
          long t0 = System.nanoTime();
          CommunicatorException e = assertThrows(CommunicatorException.class, () -> comm.allReduceSum(t));
          long elapsedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
          assertThrows(CommunicatorException.class, () -> comm.allReduceSum(t), "a failed ring stays failed");
          return new Object[] {e.getMessage(), elapsedMs};
        } finally {
          othersDone.countDown();
        }
      } catch (InterruptedException e) {
        throw new IllegalStateException(e);
      }
    });
    for (int r = 0; r < world; r++) {
      if (r == stalled) {
        continue;
      }
      String msg = (String) outcome.get(r)[0];
      long ms = (Long) outcome.get(r)[1];
      assertTrue(msg.startsWith("rank " + r + ": allReduceSum #2"), msg);
      assertTrue(msg.contains("peer rank " + stalled + ":"), "rank " + r + " blamed the wrong rank: " + msg);
      assertTrue(ms < timeout.toMillis() + 5_000, "rank " + r + " took " + ms + " ms: " + msg);
    }
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void abortFromAnotherThreadUnblocksACollective() {
    CountDownLatch aborted = new CountDownLatch(1);
    List<String> messages = LocalLauncher.run(2, 0, 50, ctx -> {
      try (CpuDevice d = new CpuDevice(); RingCommunicator comm = RingTestKit.open(ctx, Duration.ofSeconds(45))) {
        CpuTensor t = d.allocate(DType.FLOAT32, 1000);
        if (ctx.rank() == 1) {
          // Not in the collective until rank 0 has been aborted; then its collective fails at once.
          assertTrue(aborted.await(40, TimeUnit.SECONDS));
          return assertThrows(CommunicatorException.class, () -> comm.allReduceSum(t)).getMessage();
        }
        CountDownLatch blocked = new CountDownLatch(1);
        comm.idleHook = blocked::countDown;
        Thread aborter = new Thread(() -> {
          try {
            if (blocked.await(40, TimeUnit.SECONDS)) {
              comm.abort();
            }
          } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
          }
        });
        aborter.start();
        long t0 = System.nanoTime();
        CommunicatorException e = assertThrows(CommunicatorException.class, () -> comm.allReduceSum(t));
        long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        aborted.countDown();
        assertTrue(ms < 20_000, "abort() took " + ms + " ms to unblock the collective");
        assertThrows(CommunicatorException.class, () -> comm.allReduceSum(t), "every call throws after abort");
        assertThrows(CommunicatorException.class, () -> comm.broadcast(t, 0));
        comm.abort();
        comm.close();
        comm.close();
        assertThrows(IllegalStateException.class, () -> comm.allReduceSum(t));
        return e.getMessage();
      } catch (InterruptedException e) {
        throw new IllegalStateException(e);
      }
    });
    assertNotNull(messages.get(0));
    assertTrue(messages.get(0).contains("abort()"), messages.get(0));
    assertTrue(messages.get(1).contains("peer rank 0"), messages.get(1));
  }
}
