package dev.sparktrainer.spark;

import dev.sparktrainer.cuda.CudaDevice;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.train.EpochStats;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.Socket;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The rank side of live progress: turns the trainer's step callbacks into {@link ProgressEvent}s and sends
 * them to the driver's {@link ProgressServer} from a background thread, so training never waits for the
 * network. Step events are throttled (at most one per {@code minInterval}, plus every epoch's last step and
 * the final step); when the queue is full or the driver cannot be reached, events are dropped and training
 * goes on. {@link #close} flushes what is queued (bounded wait) so the driver sees the last events.
 */
public final class ProgressReporter implements AutoCloseable {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(ProgressReporter.class);
  /** Default minimum time between two step events of one rank. */
  public static final long DEFAULT_MIN_INTERVAL_NANOS = 250_000_000L;
  static final int QUEUE_CAPACITY = 4096;
  static final int CONNECT_TIMEOUT_MILLIS = 5000;
  static final long CLOSE_WAIT_MILLIS = 5000;
  private static final byte[] POISON = new byte[0];

  private final ProgressEndpoint endpoint; // null: disabled
  private final int rank;
  private final int world;
  private final long minIntervalNanos;
  private final LinkedBlockingQueue<byte[]> queue = new LinkedBlockingQueue<>();
  private final AtomicInteger dropped = new AtomicInteger();
  private final Thread sender;
  private volatile boolean failed;
  private volatile boolean closed;
  private volatile Socket socket;

  // step accounting (set by plan)
  private int epochs;
  private long microStepsPerEpoch;
  private int accumulation = 1;
  private int batchSize;
  private long optStepsPerEpoch;
  private long totalSteps;
  private long startStep = -1;
  private long startNanos;
  private long lastSentNanos;

  private ProgressReporter(ProgressEndpoint endpoint, int rank, int world, long minIntervalNanos) {
    this.endpoint = endpoint;
    this.rank = rank;
    this.world = world;
    this.minIntervalNanos = minIntervalNanos;
    if (endpoint == null) {
      sender = null;
      return;
    }
    sender = new Thread(this::sendLoop, "spark-trainer-progress-rank-" + rank);
    sender.setDaemon(true);
    sender.start();
  }

  /**
   * A reporter for {@code rank} of {@code world} that connects to {@code endpoint} in the background; a
   * disabled one (every call a no-op) when {@code endpoint} is null. Never throws for network problems.
   */
  public static ProgressReporter start(ProgressEndpoint endpoint, int rank, int world, long minIntervalNanos) {
    return new ProgressReporter(endpoint, rank, world, minIntervalNanos);
  }

  /** The shape of the run, for step accounting: epochs, micro-batches per epoch, accumulation, batch size. */
  public ProgressReporter plan(int epochs, long microStepsPerEpoch, int accumulation, int batchSize) {
    this.epochs = epochs;
    this.microStepsPerEpoch = microStepsPerEpoch;
    this.accumulation = Math.max(1, accumulation);
    this.batchSize = batchSize;
    this.optStepsPerEpoch = (microStepsPerEpoch + this.accumulation - 1) / this.accumulation;
    this.totalSteps = epochs * optStepsPerEpoch;
    return this;
  }

  /** Whether events are sent (an endpoint was given and the connection has not failed). */
  public boolean enabled() {
    return endpoint != null && !failed && !closed;
  }

  /** Step events dropped because the queue was full (the driver did not keep up). */
  public int dropped() {
    return dropped.get();
  }

  /**
   * The trainer's step listener: called after optimizer step {@code step} (1-based over the whole fit). The
   * first call of a task attempt starts the clock (a resumed attempt starts at its checkpoint's step): its event
   * has no rate yet (0 samples, 0 s, ETA NaN).
   */
  public void onStep(long step) {
    if (!enabled() || optStepsPerEpoch <= 0) {
      return;
    }
    long now = System.nanoTime();
    if (startStep < 0) {
      // The clock starts after the attempt's first step (which includes warm-up): rates and ETA count from here.
      startStep = step;
      startNanos = now;
    }
    int epoch = (int) ((step - 1) / optStepsPerEpoch);
    boolean epochEnd = step % optStepsPerEpoch == 0;
    if (!epochEnd && step != totalSteps && now - lastSentNanos < minIntervalNanos) {
      return;
    }
    lastSentNanos = now;
    long samples = samplesAt(step) - samplesAt(startStep);
    double seconds = (now - startNanos) / 1e9;
    long doneThisAttempt = step - startStep;
    double eta = doneThisAttempt > 0 ? (totalSteps - step) * seconds / doneThisAttempt : Double.NaN;
    offer(new ProgressEvent.Step(rank, epoch, epochs, step, totalSteps, samples, seconds, eta, Double.NaN), false);
  }

  /** Samples this rank has trained on after {@code step} optimizer steps of the fit. */
  long samplesAt(long step) {
    long fullEpochs = step / optStepsPerEpoch;
    long within = step % optStepsPerEpoch;
    long micro = fullEpochs * microStepsPerEpoch + Math.min(within * accumulation, microStepsPerEpoch);
    return micro * batchSize;
  }

  /** A finished epoch's statistics. */
  public void epoch(EpochStats stats) {
    offer(new ProgressEvent.Epoch(rank, stats), true);
  }

  /** A finished epoch's validation figures (the same on every rank: rank 0 reports them). */
  public void validation(dev.sparktrainer.api.TrainingSummary.Validation v) {
    offer(new ProgressEvent.Validation(rank, v.epoch(), v.rows(), v.loss(), v.accuracy()), true);
  }

  /** Training finished on this rank; reports the device's peak memory (-1 when it has none). */
  public void done(long peakDeviceMemoryBytes, String device) {
    offer(new ProgressEvent.Done(rank, peakDeviceMemoryBytes, device), true);
  }

  /** The device's peak memory in bytes as far as this project allocated it, or -1 (CPU). */
  public static long peakMemory(Device device) {
    try {
      return device instanceof CudaDevice c ? c.peakAllocatedBytes() : -1;
    } catch (RuntimeException | LinkageError e) {
      return -1;
    }
  }

  private void offer(ProgressEvent e, boolean important) {
    if (!enabled()) {
      return;
    }
    // Step events leave room for the important ones (epoch, done) and the closing marker.
    int limit = important ? QUEUE_CAPACITY - 1 : QUEUE_CAPACITY - 64;
    if (queue.size() >= limit) {
      dropped.incrementAndGet();
      return;
    }
    queue.add(ProgressWire.encode(e));
  }

  private void sendLoop() {
    try (Socket s = new Socket()) {
      socket = s;
      if (closed && queue.size() <= 1 && queue.peek() == POISON) {
        return; // closed before anything was reported
      }
      DriverHandshake.Streams io = DriverHandshake.open(s, endpoint.host(), endpoint.port(), CONNECT_TIMEOUT_MILLIS);
      byte[] nonce = ProgressWire.HANDSHAKE.readChallenge(io.in());
      if (nonce == null) {
        throw new IOException("the driver's progress endpoint speaks another protocol");
      }
      if (!ProgressWire.HANDSHAKE.answer(io, endpoint.token(), nonce, rank, world)) {
        throw new IOException("the driver's progress endpoint rejected this rank's token");
      }
      DataOutputStream out = io.out();
      while (true) {
        byte[] frame = queue.take();
        if (frame == POISON) {
          break;
        }
        out.write(frame);
        if (queue.isEmpty()) {
          out.flush();
        }
      }
      out.flush();
      s.shutdownOutput();
    } catch (IOException e) {
      failed = true;
      queue.clear();
      LOG.warn("rank " + rank + ": live progress to " + endpoint + " is off (" + e + "); training is not affected");
    } catch (InterruptedException e) {
      failed = true;
      Thread.currentThread().interrupt();
    }
  }

  /** Sends what is queued (waiting at most a few seconds) and closes the connection. Idempotent. */
  @Override
  public void close() {
    if (sender == null || closed) {
      return;
    }
    closed = true;
    queue.add(POISON);
    try {
      sender.join(CLOSE_WAIT_MILLIS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    if (sender.isAlive()) {
      // The driver stopped reading: drop the connection rather than leave the thread blocked in a write.
      sender.interrupt();
      Socket s = socket;
      if (s != null) {
        try {
          s.close();
        } catch (IOException ignored) {
          // closing
        }
      }
    }
  }
}
