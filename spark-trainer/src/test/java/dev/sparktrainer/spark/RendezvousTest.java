package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.CommunicatorException;
import java.io.DataInputStream;
import java.net.Socket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The driver rendezvous (Note [driver rendezvous]) over loopback, ranks as threads. */
@Timeout(60)
class RendezvousTest {
  private final ExecutorService pool = Executors.newCachedThreadPool();

  @AfterEach
  void stop() throws InterruptedException {
    pool.shutdownNow();
    assertTrue(pool.awaitTermination(20, TimeUnit.SECONDS), "a rank thread did not finish");
  }

  private static Throwable failure(Future<?> f) throws InterruptedException {
    ExecutionException e = assertThrows(ExecutionException.class, () -> f.get(30, TimeUnit.SECONDS));
    return e.getCause();
  }

  @Test
  void ranksGatherInOrderSeveralTimes() throws Exception {
    int world = 3;
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", world)) {
      List<Future<List<List<String>>>> ranks = new ArrayList<>();
      for (int r = 0; r < world; r++) {
        int rank = r;
        ranks.add(pool.submit(() -> {
          try (RendezvousClient c = RendezvousClient.connect(server.endpoint(), rank, world, 0)) {
            List<List<String>> out = new ArrayList<>();
            for (int k = 0; k < 3; k++) {
              out.add(c.allGather("rank " + rank + " call " + k, Duration.ofSeconds(20), () -> false));
            }
            return out;
          }
        }));
      }
      for (Future<List<List<String>>> f : ranks) {
        List<List<String>> got = f.get(30, TimeUnit.SECONDS);
        for (int k = 0; k < 3; k++) {
          assertEquals(List.of("rank 0 call " + k, "rank 1 call " + k, "rank 2 call " + k), got.get(k));
        }
      }
      assertEquals(3, server.completedGathers());
      assertEquals(0, server.rejectedConnections());
    }
  }

  @Test
  void aWrongTokenIsRejected() throws Exception {
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", 2)) {
      RendezvousEndpoint forged = new RendezvousEndpoint("127.0.0.1", server.endpoint().port(), "not-the-token");
      CommunicatorException e = assertThrows(CommunicatorException.class,
          () -> RendezvousClient.connect(forged, 0, 2, 0));
      assertTrue(e.getMessage().contains("rejected this rank's token"), e.getMessage());
      assertTrue(e.getMessage().contains(RendezvousServer.CONF + "=barrier"), e.getMessage());
      // A rank number outside the world is refused even with the right token.
      assertThrows(CommunicatorException.class, () -> RendezvousClient.connect(server.endpoint(), 2, 2, 0));
      assertEquals(2, server.rejectedConnections());
    }
  }

  @Test
  void aRawClientCannotSpeakWithoutAuthenticating() throws Exception {
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", 2, Duration.ofMillis(300));
        Socket s = new Socket("127.0.0.1", server.endpoint().port())) {
      DataInputStream in = new DataInputStream(s.getInputStream());
      assertEquals(RendezvousServer.MAGIC, in.readInt());
      assertEquals(RendezvousServer.VERSION, in.readInt());
      in.readFully(new byte[DriverHandshake.NONCE_BYTES]);
      // Say nothing: the server drops the connection after its handshake timeout.
      assertEquals(-1, in.read());
      assertEquals(1, server.rejectedConnections());
    }
  }

  @Test
  void aMissingRankIsNamedWhenTheGatherTimesOut() throws Exception {
    int world = 3;
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", world)) {
      List<Future<?>> waiting = new ArrayList<>();
      for (int r = 0; r < 2; r++) { // rank 2 never comes
        int rank = r;
        waiting.add(pool.submit(() -> {
          try (RendezvousClient c = RendezvousClient.connect(server.endpoint(), rank, world, 0)) {
            return c.allGather("x", Duration.ofMillis(500), () -> false);
          }
        }));
      }
      for (Future<?> f : waiting) {
        Throwable t = failure(f);
        assertTrue(t instanceof CommunicatorException, String.valueOf(t));
        assertTrue(t.getMessage().contains("timed out after 0.5 s waiting for rank(s) [2] of 3"), t.getMessage());
      }
      // A rank that arrives after the failure learns of it at once.
      try (RendezvousClient late = RendezvousClient.connect(server.endpoint(), 2, world, 0)) {
        CommunicatorException e = assertThrows(CommunicatorException.class,
            () -> late.allGather("x", Duration.ofSeconds(20), () -> false));
        assertTrue(e.getMessage().contains("waiting for rank(s) [2]"), e.getMessage());
      }
    }
  }

  @Test
  void aNewStageAttemptFailsTheOldOnesGathers() throws Exception {
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", 2)) {
      RendezvousClient old = RendezvousClient.connect(server.endpoint(), 0, 2, 0);
      try {
        Future<?> stale = pool.submit(() -> old.allGather("attempt 0", Duration.ofSeconds(30), () -> false));
        assertTrue(server.awaitArrivals(1, Duration.ofSeconds(20)), "rank 0's gather of attempt 0 never arrived");
        // Rank 1 of the retried stage (attempt 1) arrives: rank 0's gather of attempt 0 fails at once.
        Future<List<String>> retried = pool.submit(() -> {
          try (RendezvousClient a = RendezvousClient.connect(server.endpoint(), 0, 2, 1);
              RendezvousClient b = RendezvousClient.connect(server.endpoint(), 1, 2, 1)) {
            Future<List<String>> f0 = pool.submit(() -> a.allGather("a0", Duration.ofSeconds(20), () -> false));
            List<String> r1 = b.allGather("a1", Duration.ofSeconds(20), () -> false);
            assertEquals(r1, f0.get(20, TimeUnit.SECONDS));
            return r1;
          }
        });
        assertEquals(List.of("a0", "a1"), retried.get(30, TimeUnit.SECONDS));
        Throwable t = failure(stale);
        assertTrue(t.getMessage().contains("stage attempt 1 started"), t.getMessage());
      } finally {
        old.close();
      }
    }
  }

  @Test
  void aKilledTaskStopsWaiting() throws Exception {
    try (RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", 2);
        RendezvousClient c = RendezvousClient.connect(server.endpoint(), 0, 2, 0)) {
      AtomicBoolean killed = new AtomicBoolean();
      Future<?> waiting = pool.submit(() -> c.allGather("x", Duration.ofSeconds(60), killed::get));
      killed.set(true); // Spark kills the task (another rank failed)
      Throwable t = failure(waiting);
      assertTrue(t.getMessage().contains("the task was killed"), t.getMessage());
    }
  }

  @Test
  void closingTheServerFailsTheWaitingRanks() throws Exception {
    RendezvousServer server = RendezvousServer.start("127.0.0.1", "127.0.0.1", 2);
    try (RendezvousClient c = RendezvousClient.connect(server.endpoint(), 1, 2, 0)) {
      Future<?> waiting = pool.submit(() -> c.allGather("x", Duration.ofSeconds(60), () -> false));
      server.close();
      Throwable t = failure(waiting);
      assertTrue(t instanceof CommunicatorException, String.valueOf(t));
    } finally {
      server.close();
    }
  }
}
