package dev.sparktrainer.comm;

import dev.sparktrainer.cpu.CpuTensor;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import java.io.IOException;
import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.NetworkInterface;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.CancelledKeyException;
import java.nio.channels.ClosedSelectorException;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The CPU backend's {@link Communicator}: a TCP ring between the ranks of one job. Rank r sends to rank
 * r+1 and receives from rank r-1 (mod W) over two authenticated connections.
 *
 * <pre>{@code
 * try (RingCommunicator comm = RingCommunicator.create(ctx, Duration.ofSeconds(60))) {  // a collective
 *   comm.broadcast(params, 0);
 *   ... comm.allReduceSum(grads); ...
 * }
 * }</pre>
 *
 * <p><b>Setup.</b> Every rank listens on an ephemeral port, publishes {@code host:port} through
 * {@link WorkerContext#allGather}, connects to its right neighbour and accepts its left neighbour. Both
 * connections are authenticated with the job token by an HMAC-SHA256 challenge-response (see
 * {@link RingHandshake}); connections that fail it are rejected and logged, and the rank keeps waiting for
 * the real neighbour until the timeout. The listening socket is closed once the ring is up. With W = 1
 * there are no sockets and every collective is the identity.
 *
 * <p><b>Collectives.</b> {@link #allReduceSum} is the bandwidth-optimal ring: a reduce-scatter and an
 * all-gather over W contiguous chunks, 2(W-1)/W of the buffer sent and received per rank. Chunk c is
 * summed along the ring in a fixed order (starting at rank c), and the all-gather copies the finished
 * chunks, so every rank ends with the same bits and a run is bitwise reproducible. {@link #broadcast} is
 * pipelined along the ring from the root in 1 MiB frames. Only float32 CPU tensors are supported.
 *
 * <p><b>Failures.</b> See Note [ring failure detection] in the source. Every wait is bounded: when no data
 * moves for the timeout, the collective throws {@link CommunicatorException} naming the operation and the
 * rank it blames ("peer rank N"). After a failure, {@link #abort()} or {@link #close()} every call throws;
 * a failed ring keeps its sockets (with their output shut, so the neighbours learn of it) until
 * {@link #close()}. {@link #abort()} may be called from any thread; the collectives and {@link #close()}
 * are serialised on one lock.
 */
public final class RingCommunicator implements Communicator {
  /*
   * Note [ring failure detection]
   * Data travels in frames: a 32-byte header (type, op, op argument, collective number, step, payload
   * length, total element count), then the payload. Receivers check every header against what they
   * expect (the same collective, step and size; payload <= 1 MiB and <= what is still owed), so a rank
   * that issues a different collective, or a corrupt stream, fails with a message instead of a hang.
   *
   * Only the stalled rank's neighbours see it directly; the other ranks merely wait for a neighbour that
   * waits in turn. So that everyone blames the right rank, a rank that has seen no data move for a
   * heartbeat (timeout/4, at most 2 s) sends a WAIT frame naming whom it blames to both neighbours (to the
   * right in the data stream, to the left back along the connection it receives on, where nothing else
   * travels). A rank waiting to receive blames what its left neighbour reported, else the left neighbour;
   * a rank waiting only to send blames what its right neighbour reported, else the right neighbour. The
   * reports travel along the chain of waiting ranks and stop at the stalled one, which sends nothing.
   * When a rank's wait reaches the timeout, or a neighbour breaks the connection, it fails, and tells both
   * neighbours in an ABORT frame (with the rank it blames and its message) before shutting its output;
   * a rank that receives an ABORT fails at once with the same culprit. WAIT and ABORT frames never count
   * as progress. This is best effort (a frame cannot be inserted into a half-written data frame), but it
   * means that a rank that stops calling collectives is named by every other rank within the timeout plus
   * a heartbeat.
   */
  private static final Logger LOG = LoggerFactory.getLogger(RingCommunicator.class);

  static final int HEADER_BYTES = 32;
  static final int MAX_FRAME_BYTES = 1 << 20;
  static final int MAX_FRAME_FLOATS = MAX_FRAME_BYTES / 4;
  static final int MAX_ABORT_TEXT = 1024;
  static final int T_DATA = 1;
  static final int T_WAIT = 2;
  static final int T_ABORT = 3;
  static final int OP_ALL_REDUCE = 1;
  static final int OP_BROADCAST = 2;
  static final String ADDRESS_PREFIX = "ring-v1 ";

  private final int rank;
  private final int world;
  private final int left;
  private final int right;
  private final long timeoutNanos;
  private final long heartbeatNanos;
  private final int rejectedConnections;

  // Links and buffers; all null when world == 1.
  private final SocketChannel toRight; // data goes out; WAIT/ABORT come back
  private final SocketChannel fromLeft; // data comes in; WAIT/ABORT go back
  private final Selector selector;
  private final SelectionKey rightKey;
  private final SelectionKey leftKey;
  private final ByteBuffer sendBuf; // (HEADER + 1 MiB) the data frame being written to the right
  private final ByteBuffer ctlOut; // a WAIT/ABORT frame being written to the right
  private final ByteBuffer backOut; // a WAIT/ABORT frame being written back to the left
  private final ByteBuffer hdrIn; // (HEADER) a frame header from the left
  private final ByteBuffer payloadIn; // (1 MiB) a data payload from the left
  private final ByteBuffer ctlIn; // a WAIT/ABORT payload from the left
  private final ByteBuffer backHdr; // a frame header coming back from the right
  private final ByteBuffer backIn; // its payload
  private final float[] scratch; // (MAX_FRAME_FLOATS)

  private final Object opLock = new Object();
  private volatile boolean aborted;
  private volatile boolean closed;
  private volatile String unusable; // why calls now throw; null while usable
  /** Test seam: run each time a collective is about to block waiting for its peers. */
  volatile Runnable idleHook;

  // State of the collective in flight (touched only under opLock).
  private int seq;
  private int received; // elements received in the current step
  private boolean dataMoved; // payload bytes read in the last pumpLeft
  private int leftBlame = -1; // whom the left neighbour reported it waits for, -1 if none
  private int rightBlame = -1; // whom the right neighbour reported it waits for, -1 if none
  private int inState; // reading from the left: 0 header, 1 data payload, 2 control payload
  private int ctlType;
  private int ctlSeq;
  private int backState; // reading from the right: 0 header, 1 control payload
  private int backType;
  private int backSeq;
  private boolean backOpen = true;

  private RingCommunicator(int rank, int world, Duration timeout, RingHandshake.Links links) throws IOException {
    this.rank = rank;
    this.world = world;
    this.left = Math.floorMod(rank - 1, world);
    this.right = (rank + 1) % world;
    this.timeoutNanos = timeout.toNanos();
    this.heartbeatNanos = Math.max(TimeUnit.MILLISECONDS.toNanos(10),
        Math.min(TimeUnit.SECONDS.toNanos(2), timeoutNanos / 4));
    if (links == null) {
      rejectedConnections = 0;
      toRight = fromLeft = null;
      selector = null;
      rightKey = leftKey = null;
      sendBuf = ctlOut = backOut = hdrIn = payloadIn = ctlIn = backHdr = backIn = null;
      scratch = null;
      return;
    }
    this.rejectedConnections = links.rejected();
    this.toRight = links.toRight();
    this.fromLeft = links.fromLeft();
    Selector sel = Selector.open();
    this.selector = sel;
    this.rightKey = toRight.register(sel, 0);
    this.leftKey = fromLeft.register(sel, 0);
    this.sendBuf = ByteBuffer.allocateDirect(HEADER_BYTES + MAX_FRAME_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    this.payloadIn = ByteBuffer.allocateDirect(MAX_FRAME_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    this.hdrIn = ByteBuffer.allocate(HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    this.backHdr = ByteBuffer.allocate(HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    this.ctlOut = ByteBuffer.allocate(HEADER_BYTES + 4 + MAX_ABORT_TEXT).order(ByteOrder.LITTLE_ENDIAN);
    this.backOut = ByteBuffer.allocate(HEADER_BYTES + 4 + MAX_ABORT_TEXT).order(ByteOrder.LITTLE_ENDIAN);
    this.ctlIn = ByteBuffer.allocate(4 + MAX_ABORT_TEXT).order(ByteOrder.LITTLE_ENDIAN);
    this.backIn = ByteBuffer.allocate(4 + MAX_ABORT_TEXT).order(ByteOrder.LITTLE_ENDIAN);
    this.scratch = new float[MAX_FRAME_FLOATS];
    sendBuf.limit(0);
    ctlOut.limit(0);
    backOut.limit(0);
  }

  /**
   * Builds the ring with the defaults of {@link Builder} and the given timeout. A collective: every rank
   * of {@code ctx} must call it.
   */
  public static RingCommunicator create(WorkerContext ctx, Duration timeout) {
    return builder(ctx).optTimeout(timeout).build();
  }

  /**
   * Builds the ring listening on {@code host} (a name or address of this machine that the other ranks can
   * reach, e.g. the Spark executor's host; null for {@link #defaultBindAddress()}), which is also what the
   * other ranks are told to connect to. A collective: every rank of {@code ctx} must call it.
   */
  public static RingCommunicator create(WorkerContext ctx, String host, Duration timeout) {
    Builder b = builder(ctx).optTimeout(timeout);
    if (host != null && !host.isBlank()) {
      try {
        b.optBindAddress(InetAddress.getByName(host.trim())).optAdvertisedHost(host.trim());
      } catch (IOException e) {
        throw new CommunicatorException("rank " + ctx.rank() + ": ring setup: cannot resolve this host's name '"
            + host + "': " + e, e);
      }
    }
    return b.build();
  }

  /** A builder for the ring of {@code ctx}'s job. */
  public static Builder builder(WorkerContext ctx) {
    return new Builder(ctx);
  }

  /** Options of a {@link RingCommunicator}; {@link #build()} sets the ring up. */
  public static final class Builder {
    private final WorkerContext ctx;
    private Duration timeout = Duration.ofSeconds(60);
    private InetAddress bindAddress;
    private String advertisedHost;
    private int socketBufferBytes = 0;

    private Builder(WorkerContext ctx) {
      if (ctx == null) {
        throw new IllegalArgumentException("WorkerContext is null");
      }
      this.ctx = ctx;
    }

    /**
     * How long a collective (and the setup) may go without any data moving before it fails. Default 60 s.
     */
    public Builder optTimeout(Duration timeout) {
      if (timeout == null || timeout.isNegative() || timeout.isZero()) {
        throw new IllegalArgumentException("timeout must be > 0, got " + timeout);
      }
      this.timeout = timeout;
      return this;
    }

    /**
     * The local address to listen on; it must be reachable from the other ranks. Default:
     * {@link #defaultBindAddress()} (SPARK_LOCAL_IP, else this host's non-loopback address, else loopback).
     */
    public Builder optBindAddress(InetAddress bindAddress) {
      this.bindAddress = bindAddress;
      return this;
    }

    /**
     * The host name or address published to the other ranks. Default: the bind address (or, when binding
     * to the wildcard address, {@link #defaultBindAddress()}).
     */
    public Builder optAdvertisedHost(String host) {
      this.advertisedHost = host;
      return this;
    }

    /**
     * SO_SNDBUF/SO_RCVBUF of the ring's sockets; 0 (the default) leaves them to the OS. On Linux that means
     * TCP autotuning, which grows the buffers to what the link needs (up to net.ipv4.tcp_rmem/tcp_wmem);
     * a fixed size switches autotuning off and is silently capped by net.core.rmem_max/wmem_max (208 KiB
     * on a stock kernel). On loopback, 1 MiB, 4 MiB and autotuned buffers measured the same, so the
     * default is the one that cannot shrink a buffer below what the link needs.
     */
    public Builder optSocketBufferBytes(int bytes) {
      if (bytes < 0) {
        throw new IllegalArgumentException("socket buffer size must be >= 0, got " + bytes);
      }
      this.socketBufferBytes = bytes;
      return this;
    }

    /**
     * Sets the ring up: listen, exchange addresses through {@link WorkerContext#allGather} (a collective),
     * connect and authenticate. Throws {@link CommunicatorException} naming the neighbour that could not be
     * reached or authenticated within the timeout.
     */
    public RingCommunicator build() {
      int rank = ctx.rank();
      int world = ctx.worldSize();
      if (world < 1 || rank < 0 || rank >= world) {
        throw new IllegalArgumentException("invalid rank " + rank + " in a world of " + world);
      }
      try {
        if (world == 1) {
          return new RingCommunicator(0, 1, timeout, null);
        }
      } catch (IOException e) {
        throw new IllegalStateException(e);
      }
      HmacAuth auth = new HmacAuth(ctx.jobToken());
      InetAddress bind = bindAddress != null ? bindAddress : defaultBindAddress();
      ServerSocketChannel server = null;
      RingHandshake.Links links = null;
      try {
        server = ServerSocketChannel.open();
        if (socketBufferBytes > 0) {
          server.setOption(StandardSocketOptions.SO_RCVBUF, socketBufferBytes); // inherited by accepted sockets
        }
        server.bind(new InetSocketAddress(bind, 0), 64);
        int port = ((InetSocketAddress) server.getLocalAddress()).getPort();
        String host = advertisedHost != null ? advertisedHost
            : bind.isAnyLocalAddress() ? hostString(defaultBindAddress()) : hostString(bind);
        List<String> all = ctx.allGather(ADDRESS_PREFIX + hostPort(host, port));
        InetSocketAddress rightAddress = parseAddress(all, world, (rank + 1) % world, rank);
        links = RingHandshake.establish(rank, world, auth, server, rightAddress, socketBufferBytes,
            timeout.toNanos());
        RingCommunicator c = new RingCommunicator(rank, world, timeout, links);
        LOG.info("rank {}/{}: ring up: listening on {}:{}, sending to rank {} at {}, {} connection(s) rejected",
            rank, world, host, port, (rank + 1) % world, rightAddress, links.rejected());
        return c;
      } catch (IOException e) {
        if (links != null) {
          RingHandshake.closeQuietly(links.toRight());
          RingHandshake.closeQuietly(links.fromLeft());
        }
        throw new CommunicatorException("rank " + rank + ": ring setup failed on " + bind + ": " + e, e);
      } finally {
        RingHandshake.closeQuietly(server);
      }
    }
  }

  /**
   * Where a rank listens by default: $SPARK_LOCAL_IP if set, else this host's address if it is not a
   * loopback address, else the first non-loopback, non-link-local IPv4 address of an interface that is up
   * (what Spark does), else the loopback address.
   */
  public static InetAddress defaultBindAddress() {
    try {
      String env = System.getenv("SPARK_LOCAL_IP");
      if (env != null && !env.isBlank()) {
        return InetAddress.getByName(env.trim());
      }
      InetAddress local = InetAddress.getLocalHost();
      if (!local.isLoopbackAddress()) {
        return local;
      }
      for (NetworkInterface ni : Collections.list(NetworkInterface.getNetworkInterfaces())) {
        if (!ni.isUp() || ni.isLoopback()) {
          continue;
        }
        for (InetAddress a : Collections.list(ni.getInetAddresses())) {
          if (a instanceof Inet4Address && !a.isLoopbackAddress() && !a.isLinkLocalAddress()) {
            return a;
          }
        }
      }
      return local;
    } catch (IOException e) {
      LOG.warn("cannot determine this host's address ({}); the ring listens on loopback, which works only "
          + "when all ranks run on this machine (set SPARK_LOCAL_IP or optBindAddress)", e.toString());
      return InetAddress.getLoopbackAddress();
    }
  }

  private static String hostString(InetAddress a) {
    return a.getHostAddress();
  }

  private static String hostPort(String host, int port) {
    return (host.indexOf(':') >= 0 && !host.startsWith("[") ? "[" + host + "]" : host) + ":" + port;
  }

  /** Parses rank {@code r}'s published "ring-v1 host:port" (host may be a bracketed IPv6 literal). */
  static InetSocketAddress parseAddress(List<String> all, int world, int r, int me) {
    if (all == null || all.size() != world) {
      throw new CommunicatorException("rank " + me + ": ring setup: allGather returned "
          + (all == null ? "null" : all.size() + " entries") + " for a world of " + world);
    }
    String s = all.get(r);
    String bad = "rank " + me + ": ring setup, peer rank " + r + ": it published '" + s
        + "', not '" + ADDRESS_PREFIX + "host:port' (do all ranks run the same spark-trainer version and "
        + "call the same collectives in the same order?)";
    if (s == null || !s.startsWith(ADDRESS_PREFIX) || s.length() > 300) {
      throw new CommunicatorException(bad);
    }
    String hp = s.substring(ADDRESS_PREFIX.length());
    int colon = hp.lastIndexOf(':');
    if (colon <= 0) {
      throw new CommunicatorException(bad);
    }
    String host = hp.substring(0, colon);
    if (host.startsWith("[") && host.endsWith("]")) {
      host = host.substring(1, host.length() - 1);
    }
    int port;
    try {
      port = Integer.parseInt(hp.substring(colon + 1));
    } catch (NumberFormatException e) {
      throw new CommunicatorException(bad);
    }
    if (host.isEmpty() || port < 1 || port > 65535) {
      throw new CommunicatorException(bad);
    }
    InetSocketAddress a = new InetSocketAddress(host, port);
    if (a.isUnresolved()) {
      throw new CommunicatorException("rank " + me + ": ring setup, peer rank " + r + ": cannot resolve its host '"
          + host + "'");
    }
    return a;
  }

  @Override
  public int rank() {
    return rank;
  }

  @Override
  public int worldSize() {
    return world;
  }

  /** Connections turned away by this rank during setup (bad token, garbage, wrong rank). */
  int rejectedConnections() {
    return rejectedConnections;
  }

  /** The inactivity timeout of collectives. */
  public Duration timeout() {
    return Duration.ofNanos(timeoutNanos);
  }

  private static CpuTensor floats(Tensor t, String op) {
    if (!(t instanceof CpuTensor ct) || t.dtype() != DType.FLOAT32) {
      throw new IllegalArgumentException("RingCommunicator." + op + " needs a float32 CPU tensor, got " + t);
    }
    return ct;
  }

  private void ensureUsable(String op) {
    if (closed) {
      throw new IllegalStateException("rank " + rank + ": " + op + " on a closed RingCommunicator");
    }
    String why = unusable;
    if (why != null) {
      throw new CommunicatorException("rank " + rank + ": " + op + " on a RingCommunicator that is unusable: "
          + why);
    }
  }

  private static int chunkStart(int c, int n, int w) {
    return (int) ((long) c * n / w);
  }

  /**
   * In place: buf = the sum of every rank's buf, float32, the same bits on every rank (see the class
   * comment). Every rank must call it with a tensor of the same size.
   */
  @Override
  public void allReduceSum(Tensor buf) {
    CpuTensor t = floats(buf, "allReduceSum");
    synchronized (opLock) {
      ensureUsable("allReduceSum");
      int s = ++seq;
      int n = t.size();
      if (world == 1 || n == 0) {
        return;
      }
      Coll c = new Coll("allReduceSum", OP_ALL_REDUCE, 0, s, n);
      float[] a = t.floats();
      int base = t.offset();
      run(c, () -> {
        int w = world;
        for (int k = 0; k < w - 1; k++) { // reduce-scatter: afterwards rank r holds the sum of chunk r+1
          int sc = Math.floorMod(rank - k, w);
          int rc = Math.floorMod(rank - k - 1, w);
          exchange(c, k, a, base + chunkStart(sc, n, w), chunkStart(sc + 1, n, w) - chunkStart(sc, n, w),
              base + chunkStart(rc, n, w), chunkStart(rc + 1, n, w) - chunkStart(rc, n, w), true, false);
        }
        for (int k = 0; k < w - 1; k++) { // all-gather: pass the finished chunks around
          int sc = Math.floorMod(rank + 1 - k, w);
          int rc = Math.floorMod(rank - k, w);
          exchange(c, w - 1 + k, a, base + chunkStart(sc, n, w), chunkStart(sc + 1, n, w) - chunkStart(sc, n, w),
              base + chunkStart(rc, n, w), chunkStart(rc + 1, n, w) - chunkStart(rc, n, w), false, false);
        }
      });
    }
  }

  /** In place: every rank's buf becomes root's buf, pipelined along the ring from root in 1 MiB frames. */
  @Override
  public void broadcast(Tensor buf, int root) {
    CpuTensor t = floats(buf, "broadcast");
    if (root < 0 || root >= world) {
      throw new IllegalArgumentException("broadcast root " + root + " does not exist in a world of " + world);
    }
    synchronized (opLock) {
      ensureUsable("broadcast");
      int s = ++seq;
      int n = t.size();
      if (world == 1 || n == 0) {
        return;
      }
      Coll c = new Coll("broadcast from rank " + root, OP_BROADCAST, root, s, n);
      float[] a = t.floats();
      int base = t.offset();
      boolean isRoot = rank == root;
      int sendLen = right == root ? 0 : n; // the last rank of the chain only receives
      int recvLen = isRoot ? 0 : n;
      run(c, () -> exchange(c, 0, a, base, sendLen, base, recvLen, false, !isRoot));
    }
  }

  /**
   * Tears the ring down at once: closes both connections, so a collective in flight on another thread
   * throws, and the neighbours' collectives fail naming this rank. Idempotent; safe from any thread.
   */
  @Override
  public void abort() {
    if (aborted || closed) {
      return;
    }
    aborted = true;
    if (unusable == null) {
      unusable = "abort() was called";
    }
    if (selector != null) {
      selector.wakeup();
      RingHandshake.closeQuietly(toRight);
      RingHandshake.closeQuietly(fromLeft);
      RingHandshake.closeQuietly(selector);
    }
    LOG.info("rank {}: ring communicator aborted", rank);
  }

  /** Orderly shutdown: waits for a collective in flight on another thread, then closes. Idempotent. */
  @Override
  public void close() {
    synchronized (opLock) {
      if (closed) {
        return;
      }
      closed = true;
      if (unusable == null) {
        unusable = "it is closed";
      }
      if (selector != null) {
        shutdownOutput(toRight);
        shutdownOutput(fromLeft);
        RingHandshake.closeQuietly(toRight);
        RingHandshake.closeQuietly(fromLeft);
        RingHandshake.closeQuietly(selector);
      }
    }
  }

  private static void shutdownOutput(SocketChannel ch) {
    try {
      if (ch.isOpen()) {
        ch.shutdownOutput();
      }
    } catch (IOException ignored) {
      // best effort: the peer sees the close either way
    }
  }

  /** One collective call, for messages and frame headers. */
  private final class Coll {
    final String name;
    final int op;
    final int arg;
    final int seq;
    final int total;
    int step;

    Coll(String name, int op, int arg, int seq, int total) {
      this.name = name;
      this.op = op;
      this.arg = arg;
      this.seq = seq;
      this.total = total;
    }

    String stepName() {
      if (op == OP_BROADCAST) {
        return "";
      }
      return step < world - 1 ? ", reduce-scatter step " + (step + 1) + "/" + (world - 1)
          : ", all-gather step " + (step - world + 2) + "/" + (world - 1);
    }

    @Override
    public String toString() {
      return name + " #" + seq + " (" + total + " floats" + stepName() + ")";
    }
  }

  /** A failure of the current collective, with the rank it blames. */
  private static final class RingFailure extends Exception {
    private static final long serialVersionUID = 1L;
    final int culprit;
    final String origin; // for a failure passed on by a neighbour: the message of the rank that saw it

    RingFailure(int culprit, String message, Throwable cause) {
      this(culprit, message, cause, null);
    }

    RingFailure(int culprit, String message, Throwable cause, String origin) {
      super(message, cause);
      this.culprit = culprit;
      this.origin = origin;
    }
  }

  private interface Body {
    void run() throws IOException, RingFailure;
  }

  private void run(Coll c, Body body) {
    leftBlame = -1;
    rightBlame = -1;
    try {
      body.run();
    } catch (RingFailure f) {
      throw fail(c, f.culprit, f.getMessage(), f.getCause(), f.origin);
    } catch (IOException | ClosedSelectorException | CancelledKeyException e) {
      // Channel errors are turned into RingFailures where they happen; these come from abort().
      throw fail(c, rank, e.toString(), e, null);
    }
  }

  private CommunicatorException fail(Coll c, int culprit, String what, Throwable cause, String origin) {
    if (aborted) {
      String msg = "rank " + rank + ": " + c + " was interrupted: abort() was called on this rank";
      return new CommunicatorException(msg, cause);
    }
    String msg = "rank " + rank + ": " + c + " failed, peer rank " + culprit + ": " + what;
    unusable = msg;
    LOG.warn(msg);
    tellNeighbours(c, culprit, origin != null ? origin : msg); // pass on the first-hand account
    return new CommunicatorException(msg, cause);
  }

  /** Best effort: an ABORT frame to both neighbours, then end our output (the sockets stay until close()). */
  private void tellNeighbours(Coll c, int culprit, String msg) {
    byte[] text = msg.getBytes(StandardCharsets.UTF_8);
    int len = Math.min(text.length, MAX_ABORT_TEXT);
    if (!sendBuf.hasRemaining() && !ctlOut.hasRemaining()) {
      ctlOut.clear();
      putHeader(ctlOut, T_ABORT, c, 4 + len);
      ctlOut.putInt(culprit).put(text, 0, len).flip();
      try {
        toRight.write(ctlOut);
      } catch (IOException ignored) {
        // the right neighbour may be the one that is gone
      }
    }
    if (!backOut.hasRemaining()) {
      backOut.clear();
      putHeader(backOut, T_ABORT, c, 4 + len);
      backOut.putInt(culprit).put(text, 0, len).flip();
      try {
        fromLeft.write(backOut);
      } catch (IOException ignored) {
        // the left neighbour may be the one that is gone
      }
    }
    shutdownOutput(toRight);
    shutdownOutput(fromLeft);
  }

  private static void putHeader(ByteBuffer b, int type, Coll c, int len) {
    b.putInt(type).putInt(c.op).putInt(c.arg).putInt(c.seq).putInt(c.step).putInt(len).putLong(c.total);
  }

  /**
   * One step: sends a[sendOff, +sendLen) to the right while receiving a[recvOff, +recvLen) from the left
   * (adding into it or copying over it). With {@code forward}, only what has been received so far may be
   * sent (the broadcast pipeline, where the two ranges are the same).
   */
  private void exchange(Coll c, int step, float[] a, int sendOff, int sendLen, int recvOff, int recvLen,
      boolean add, boolean forward) throws IOException, RingFailure {
    if (sendLen == 0 && recvLen == 0) {
      return;
    }
    c.step = step;
    int staged = 0;
    received = 0;
    long lastProgress = System.nanoTime();
    int toldRight = -1;
    int toldLeft = -1;
    while (true) {
      if (aborted) {
        throw new RingFailure(rank, "aborted", null);
      }
      boolean progress = false;
      // To the right: finish a control frame first, then data frames.
      if (ctlOut.hasRemaining()) {
        writeRight(ctlOut);
      }
      if (!ctlOut.hasRemaining()) {
        if (!sendBuf.hasRemaining()) {
          int avail = (forward ? Math.min(received, sendLen) : sendLen) - staged;
          if (avail > 0) {
            int m = Math.min(avail, MAX_FRAME_FLOATS);
            sendBuf.clear();
            putHeader(sendBuf, T_DATA, c, m * 4);
            sendBuf.asFloatBuffer().put(a, sendOff + staged, m);
            sendBuf.position(HEADER_BYTES + m * 4).flip();
            staged += m;
          }
        }
        if (sendBuf.hasRemaining() && writeRight(sendBuf) > 0) {
          progress = true;
          rightBlame = -1;
        }
      }
      if (backOut.hasRemaining()) {
        writeLeft(backOut);
      }
      // From the left: data and control frames.
      if (received < recvLen) {
        dataMoved = false;
        pumpLeft(c, a, recvOff, recvLen, add);
        progress |= dataMoved;
      }
      // From the right: only control frames travel back.
      boolean dataToSend = staged < sendLen || sendBuf.hasRemaining();
      pumpBack(c, dataToSend);
      boolean receiving = received < recvLen;
      if (!receiving && !dataToSend) {
        return; // a half-written control frame is finished at the start of the next step
      }
      long now = System.nanoTime();
      if (progress) {
        lastProgress = now;
        toldRight = -1;
        toldLeft = -1;
        continue;
      }
      long idle = now - lastProgress;
      if (idle >= heartbeatNanos) {
        int blame = receiving ? upstreamBlame() : downstreamBlame();
        if (blame != toldRight && !sendBuf.hasRemaining() && !ctlOut.hasRemaining()) {
          ctlOut.clear();
          putHeader(ctlOut, T_WAIT, c, 8);
          ctlOut.putInt(blame).putInt(rank).flip();
          writeRight(ctlOut);
          toldRight = blame;
        }
        if (blame != toldLeft && !backOut.hasRemaining()) {
          backOut.clear();
          putHeader(backOut, T_WAIT, c, 8);
          backOut.putInt(blame).putInt(rank).flip();
          writeLeft(backOut);
          toldLeft = blame;
        }
      }
      if (idle >= timeoutNanos) {
        throw stalled(receiving, idle);
      }
      long wakeAt = lastProgress + timeoutNanos;
      if (idle < heartbeatNanos) {
        wakeAt = Math.min(wakeAt, lastProgress + heartbeatNanos);
      }
      rightKey.interestOps((sendBuf.hasRemaining() || ctlOut.hasRemaining() ? SelectionKey.OP_WRITE : 0)
          | (backOpen ? SelectionKey.OP_READ : 0));
      leftKey.interestOps((receiving ? SelectionKey.OP_READ : 0)
          | (backOut.hasRemaining() ? SelectionKey.OP_WRITE : 0));
      Runnable hook = idleHook;
      if (hook != null) {
        hook.run();
      }
      selector.select(Math.max(1, TimeUnit.NANOSECONDS.toMillis(wakeAt - now) + 1));
      selector.selectedKeys().clear();
    }
  }

  private int upstreamBlame() {
    return leftBlame >= 0 && leftBlame != rank ? leftBlame : left;
  }

  private int downstreamBlame() {
    return rightBlame >= 0 && rightBlame != rank ? rightBlame : right;
  }

  private RingFailure stalled(boolean receiving, long idleNanos) {
    String secs = String.format("%.1f s", idleNanos / 1e9);
    if (receiving) {
      int blame = upstreamBlame();
      return new RingFailure(blame, "no data from rank " + left + " for " + secs
          + (blame == left ? " (it is stalled, dead, or not calling this collective)"
              : "; rank " + left + " reports that it is waiting for rank " + blame), null);
    }
    int blame = downstreamBlame();
    return new RingFailure(blame, "rank " + right + " has not read our data for " + secs
        + (blame == right ? " (it is stalled, dead, or not calling this collective)"
            : "; rank " + right + " reports that it is waiting for rank " + blame), null);
  }

  private int writeRight(ByteBuffer b) throws RingFailure {
    try {
      return toRight.write(b);
    } catch (IOException e) {
      throw new RingFailure(right, "sending to rank " + right + " failed (" + e + ")", e);
    }
  }

  private void writeLeft(ByteBuffer b) throws RingFailure {
    try {
      fromLeft.write(b);
    } catch (IOException e) {
      throw new RingFailure(left, "the connection from rank " + left + " broke (" + e + ")", e);
    }
  }

  private int readLeft(ByteBuffer b) throws RingFailure {
    int r;
    try {
      r = fromLeft.read(b);
    } catch (IOException e) {
      throw new RingFailure(left, "receiving from rank " + left + " failed (" + e + ")", e);
    }
    if (r < 0) {
      throw new RingFailure(left, "rank " + left + " closed the connection (it failed, was aborted or closed)", null);
    }
    return r;
  }

  /** Reads what the left neighbour has sent, up to the end of this step's data; never past it. */
  private void pumpLeft(Coll c, float[] a, int recvOff, int recvLen, boolean add) throws RingFailure {
    while (received < recvLen) {
      if (inState == 0) {
        readLeft(hdrIn);
        if (hdrIn.hasRemaining()) {
          return;
        }
        hdrIn.flip();
        int type = hdrIn.getInt();
        int op = hdrIn.getInt();
        int arg = hdrIn.getInt();
        int s = hdrIn.getInt();
        int step = hdrIn.getInt();
        int len = hdrIn.getInt();
        long total = hdrIn.getLong();
        hdrIn.clear();
        if (type == T_DATA) {
          if (op != c.op || arg != c.arg || s != c.seq || total != c.total) {
            throw new RingFailure(left, "rank " + left + " sent data of " + describe(op, arg, s, total)
                + " while this rank is in " + c.name + " #" + c.seq + " (" + c.total + " floats): every rank must "
                + "issue the same collectives in the same order with the same sizes", null);
          }
          int owed = (recvLen - received) * 4;
          if (step != c.step || len <= 0 || len % 4 != 0 || len > owed || len > MAX_FRAME_BYTES) {
            throw new RingFailure(left, "protocol error: rank " + left + " sent a data frame for step " + step
                + " of " + len + " bytes; expected step " + c.step + " and at most " + Math.min(owed, MAX_FRAME_BYTES)
                + " bytes", null);
          }
          payloadIn.clear().limit(len);
          inState = 1;
        } else if ((type == T_WAIT && len == 8) || (type == T_ABORT && len >= 4 && len <= 4 + MAX_ABORT_TEXT)) {
          ctlType = type;
          ctlSeq = s;
          ctlIn.clear().limit(len);
          inState = 2;
        } else {
          throw new RingFailure(left, "protocol error: rank " + left + " sent a frame of type " + type + " and "
              + len + " bytes", null);
        }
      } else if (inState == 1) {
        if (readLeft(payloadIn) > 0) {
          dataMoved = true;
        }
        if (payloadIn.hasRemaining()) {
          return;
        }
        payloadIn.flip();
        int m = payloadIn.remaining() / 4;
        int dst = recvOff + received;
        if (add) {
          payloadIn.asFloatBuffer().get(scratch, 0, m);
          for (int i = 0; i < m; i++) {
            a[dst + i] += scratch[i];
          }
        } else {
          payloadIn.asFloatBuffer().get(a, dst, m);
        }
        received += m;
        leftBlame = -1;
        inState = 0;
      } else {
        readLeft(ctlIn);
        if (ctlIn.hasRemaining()) {
          return;
        }
        ctlIn.flip();
        inState = 0;
        int culprit = ctlIn.getInt();
        if (culprit < 0 || culprit >= world) {
          throw new RingFailure(left, "protocol error: rank " + left + " named rank " + culprit, null);
        }
        if (ctlType == T_ABORT) {
          String origin = text(ctlIn);
          throw new RingFailure(culprit, "rank " + left + " reports: " + origin, null, origin);
        }
        if (ctlSeq == c.seq) { // a WAIT from an earlier collective is stale
          leftBlame = culprit;
        }
      }
    }
  }

  /** Reads control frames that come back from the right neighbour. */
  private void pumpBack(Coll c, boolean dataToSend) throws RingFailure {
    while (backOpen) {
      int r;
      ByteBuffer b = backState == 0 ? backHdr : backIn;
      try {
        r = toRight.read(b);
      } catch (IOException e) {
        if (!dataToSend) {
          backOpen = false; // the right neighbour may have finished and closed; the next send will tell
          return;
        }
        throw new RingFailure(right, "the connection to rank " + right + " broke (" + e + ")", e);
      }
      if (r < 0) {
        if (!dataToSend) {
          backOpen = false;
          return;
        }
        throw new RingFailure(right, "rank " + right + " closed the connection (it failed, was aborted or closed)",
            null);
      }
      if (b.hasRemaining()) {
        return;
      }
      b.flip();
      if (backState == 0) {
        int type = b.getInt();
        b.getInt();
        b.getInt();
        int s = b.getInt();
        b.getInt();
        int len = b.getInt();
        b.clear();
        if (!((type == T_WAIT && len == 8) || (type == T_ABORT && len >= 4 && len <= 4 + MAX_ABORT_TEXT))) {
          throw new RingFailure(right, "protocol error: rank " + right + " sent back a frame of type " + type
              + " and " + len + " bytes", null);
        }
        backType = type;
        backSeq = s;
        backIn.clear().limit(len);
        backState = 1;
      } else {
        backState = 0;
        int culprit = b.getInt();
        if (culprit < 0 || culprit >= world) {
          throw new RingFailure(right, "protocol error: rank " + right + " named rank " + culprit, null);
        }
        if (backType == T_ABORT) {
          String origin = text(b);
          throw new RingFailure(culprit, "rank " + right + " reports: " + origin, null, origin);
        }
        if (backSeq == c.seq) {
          rightBlame = culprit;
        }
      }
    }
  }

  private static String text(ByteBuffer b) {
    byte[] t = new byte[b.remaining()];
    b.get(t);
    return new String(t, StandardCharsets.UTF_8);
  }

  private String describe(int op, int arg, int s, long total) {
    String name = op == OP_ALL_REDUCE ? "allReduceSum" : op == OP_BROADCAST ? "broadcast from rank " + arg
        : "an unknown collective (" + op + ")";
    return name + " #" + s + " (" + total + " floats)";
  }

  @Override
  public String toString() {
    return "RingCommunicator(rank " + rank + " of " + world + ")";
  }
}
