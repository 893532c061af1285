package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.train.EpochStats;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.net.Socket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The driver's progress endpoint and the ranks' reporters over loopback. */
@Timeout(60)
class ProgressServerTest {

  /** Records every event, per rank, in arrival order. */
  static final class Recorder implements ProgressListener {
    final Map<Integer, List<ProgressEvent>> byRank = new TreeMap<>();

    @Override
    public synchronized void accept(ProgressEvent e) {
      byRank.computeIfAbsent(e.rank(), k -> new ArrayList<>()).add(e);
    }

    synchronized List<ProgressEvent> of(int rank) {
      return List.copyOf(byRank.getOrDefault(rank, List.of()));
    }
  }

  @Test
  void eventsArriveInOrderWithTheRightCounts() throws Exception {
    int world = 3;
    int epochs = 2;
    int micro = 10; // micro-batches per epoch
    int accum = 3; // -> 4 optimizer steps per epoch (3 + 3 + 3 + 1 micro-batches)
    int batch = 8;
    Recorder rec = new Recorder();
    try (ProgressServer server = ProgressServer.start("127.0.0.1", "127.0.0.1", world, rec)) {
      List<Thread> ranks = new ArrayList<>();
      for (int r = 0; r < world; r++) {
        int rank = r;
        Thread t = new Thread(() -> {
          try (ProgressReporter rep = ProgressReporter.start(server.endpoint(), rank, world, 0)
              .plan(epochs, micro, accum, batch)) {
            for (long s = 1; s <= 8; s++) {
              rep.onStep(s);
              if (s % 4 == 0) {
                rep.epoch(new EpochStats((int) (s / 4) - 1, rank, micro * batch, 1.0 / s, 0.5, 1, 0.1, 0.8, 0.1, 0));
              }
            }
            rep.done(1000L + rank, "cpu");
          }
        });
        t.start();
        ranks.add(t);
      }
      for (Thread t : ranks) {
        t.join();
      }
      assertTrue(server.awaitDone(Duration.ofSeconds(20)), "not every rank's Done arrived");
      assertEquals(0, server.rejectedConnections());
      assertArrayEquals(new long[] {1000, 1001, 1002}, server.peakDeviceMemory());
    }
    for (int r = 0; r < world; r++) {
      List<ProgressEvent> ev = rec.of(r);
      assertEquals(8 + 2 + 1, ev.size(), "rank " + r + ": " + ev);
      List<Long> steps = new ArrayList<>();
      int epochsSeen = 0;
      for (ProgressEvent e : ev) {
        assertEquals(r, e.rank());
        if (e instanceof ProgressEvent.Step s) {
          steps.add(s.step());
          assertEquals(8, s.totalSteps());
          assertEquals((int) ((s.step() - 1) / 4), s.epoch());
          assertEquals(epochs, s.epochs());
        } else if (e instanceof ProgressEvent.Epoch ep) {
          assertEquals(epochsSeen++, ep.stats().epoch());
          assertEquals(4 * epochsSeen, steps.get(steps.size() - 1)); // after its epoch's last step
        }
      }
      assertEquals(List.of(1L, 2L, 3L, 4L, 5L, 6L, 7L, 8L), steps);
      assertEquals(2, epochsSeen);
      ProgressEvent.Step last = (ProgressEvent.Step) ev.get(ev.size() - 3);
      // both epochs' micro-batches (partial groups included) less step 1's, which starts the clock
      assertEquals(2L * micro * batch - accum * batch, last.samples());
      assertTrue(ev.get(ev.size() - 1) instanceof ProgressEvent.Done);
    }
  }

  @Test
  void samplesCountPartialAccumulationGroups() {
    ProgressReporter r = ProgressReporter.start(null, 0, 1, 0).plan(3, 10, 3, 8);
    assertEquals(3 * 8, r.samplesAt(1));
    assertEquals(9 * 8, r.samplesAt(3));
    assertEquals(10 * 8, r.samplesAt(4)); // the epoch's last step has 1 micro-batch
    assertEquals(13 * 8, r.samplesAt(5));
    assertEquals(30 * 8, r.samplesAt(12));
  }

  @Test
  void aClientWithoutTheTokenIsRejectedAndHeardNothing() throws Exception {
    Recorder rec = new Recorder();
    try (ProgressServer server = ProgressServer.start("127.0.0.1", "127.0.0.1", 2, rec)) {
      ProgressEndpoint ep = server.endpoint();
      // 1. a raw client answering the challenge with a MAC of another token
      try (Socket s = new Socket(ep.host(), ep.port())) {
        DataInputStream in = new DataInputStream(s.getInputStream());
        DataOutputStream out = new DataOutputStream(s.getOutputStream());
        assertEquals(ProgressWire.MAGIC, in.readInt());
        assertEquals(ProgressWire.VERSION, in.readInt());
        byte[] nonce = new byte[DriverHandshake.NONCE_BYTES];
        in.readFully(nonce);
        out.writeInt(0);
        out.write(ProgressWire.mac("not-the-token", nonce, 0, 2));
        out.write(ProgressWire.encode(new ProgressEvent.Done(0, 1, "evil")));
        out.flush();
        assertEquals(0, in.read(), "the server must answer 'rejected'");
        assertEquals(-1, in.read(), "the server must close the connection");
      }
      assertEquals(1, server.rejectedConnections());
      // 2. a right token for a rank that does not exist
      try (Socket s = new Socket(ep.host(), ep.port())) {
        DataInputStream in = new DataInputStream(s.getInputStream());
        DataOutputStream out = new DataOutputStream(s.getOutputStream());
        in.readInt();
        in.readInt();
        byte[] nonce = new byte[DriverHandshake.NONCE_BYTES];
        in.readFully(nonce);
        out.writeInt(5);
        out.write(ProgressWire.mac(ep.token(), nonce, 5, 2));
        out.flush();
        assertEquals(0, in.read());
      }
      assertEquals(2, server.rejectedConnections());
      // 3. a reporter with the wrong token gives up without disturbing training
      ProgressReporter bad = ProgressReporter.start(new ProgressEndpoint(ep.host(), ep.port(), "wrong"), 1, 2, 0)
          .plan(1, 4, 1, 1);
      bad.onStep(1);
      bad.done(7, "cpu");
      bad.close();
      assertFalse(bad.enabled());
      assertEquals(3, server.rejectedConnections());
      assertTrue(rec.byRank.isEmpty(), "events of unauthenticated clients reached the listener: " + rec.byRank);
      assertArrayEquals(new long[] {-1, -1}, server.peakDeviceMemory());
    }
  }

  @Test
  void aSilentClientIsDroppedAfterTheHandshakeTimeout() throws Exception {
    try (ProgressServer server = ProgressServer.start("127.0.0.1", "127.0.0.1", 1, e -> { },
        Duration.ofMillis(200))) {
      try (Socket s = new Socket(server.endpoint().host(), server.endpoint().port())) {
        DataInputStream in = new DataInputStream(s.getInputStream());
        in.readInt();
        in.readInt();
        in.readFully(new byte[DriverHandshake.NONCE_BYTES]);
        assertEquals(-1, in.read(), "the server must hang up on a client that never answers");
      }
    }
  }

  @Test
  void aReporterThatCannotConnectNeverBlocksTraining() throws Exception {
    int port;
    try (java.net.ServerSocket free = new java.net.ServerSocket(0)) {
      port = free.getLocalPort();
    }
    ProgressReporter r = ProgressReporter.start(new ProgressEndpoint("127.0.0.1", port, "t"), 0, 1, 0)
        .plan(1, 100000, 1, 1);
    for (long s = 1; s <= 100000; s++) {
      r.onStep(s); // never blocks: queued or dropped
    }
    r.close();
    assertFalse(r.enabled());
  }

  @Test
  void awaitDoneReturnsFalseWhenARankNeverReports() throws Exception {
    CountDownLatch seen = new CountDownLatch(1);
    try (ProgressServer server = ProgressServer.start("127.0.0.1", "127.0.0.1", 2, e -> seen.countDown())) {
      try (ProgressReporter r = ProgressReporter.start(server.endpoint(), 0, 2, 0)) {
        r.done(5, "cpu");
      }
      assertTrue(seen.await(20, TimeUnit.SECONDS));
      assertFalse(server.awaitDone(Duration.ofMillis(50)));
      assertArrayEquals(new long[] {5, -1}, server.peakDeviceMemory());
    }
  }
}
