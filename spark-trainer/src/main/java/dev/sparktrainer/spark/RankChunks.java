package dev.sparktrainer.spark;

import dev.sparktrainer.data.SamplerPlan;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.Iterator;
import java.util.NoSuchElementException;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.UnsafeArrayData;
import org.apache.spark.sql.catalyst.util.ArrayData;
import org.apache.spark.unsafe.Platform;
import scala.Tuple2;

/**
 * Moves validated rows to their ranks as compact binary chunks: the map side of the shuffle before the
 * barrier stage turns each input partition into {@code (rank, chunk)} records, and each rank's task decodes
 * its chunks into its row store.
 *
 * <h2>Note [rows to ranks]</h2>
 * The sampler plan gives every row its permuted position(s) p, i.e. rank (p / B) % W and local position
 * (p / (W*B)) * B + p % B (see {@link SamplerPlan}). A row travels once per position, inside a chunk of
 * rows for that rank:
 * <pre>
 *   row   int localPosition, then int label (classification) or float[targetDim] target, then
 *         float[dim] features; little-endian and of fixed size, so a chunk is rows back to back
 *   chunk ~1 MiB of rows for one rank (at least one row); one Spark record (Integer key, byte[] chunk):
 *         key = rank for training rows, W + rank for validation rows (row i of the validation set goes
 *         to rank i % W at local position i / W: each rank evaluates a shard)
 * </pre>
 * The exchange partitions records by rank ({@link RankPartitioner}) and does not sort: a rank's chunks
 * may arrive in any order, and the rank's store keeps rows in arrival order together with the map local
 * position -> store row ({@link TaskRows.Loaded#local}), which is what the trainer iterates. So training
 * sees the same rows in the same local order as a sorted exchange would give, bitwise, for a fraction of
 * the cost (measured: ~0.6 s instead of ~2 s for 60,000 x 784 floats on 2 cores): Spark serializes a few
 * hundred byte arrays instead of a (key, row) object per row, and nothing is sorted. A rank checks that
 * every local position arrived exactly once.
 */
final class RankChunks {
  /** Target bytes per chunk. */
  static final int CHUNK_BYTES = 1 << 20;
  private static final boolean LITTLE_ENDIAN = ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN;

  private RankChunks() {}

  /** Bytes of one row record. */
  static int rowBytes(int dim, int targetDim) {
    long n = Integer.BYTES + (targetDim == 0 ? Integer.BYTES : (long) targetDim * Float.BYTES)
        + (long) dim * Float.BYTES;
    if (n > Integer.MAX_VALUE / 2) {
      throw new IllegalArgumentException("a row of " + dim + " features is too large to move (" + n + " bytes)");
    }
    return (int) n;
  }

  /**
   * The map side for one input partition of the training rows: its rows (features array&lt;float&gt;, label
   * double or target array&lt;float&gt;, validated) become {@code (rank, chunk)} records. {@code first} is the
   * global index of the partition's first row, {@code end} one past its last as validation counted them.
   */
  static Iterator<Tuple2<Integer, byte[]>> encode(int partition, Iterator<InternalRow> rows, long first, long end,
      SamplerPlan plan, int dim, int targetDim) {
    long[] pos = new long[2];
    return new Encoder("input", partition, rows, first, end, plan.world(), 0, dim, targetDim,
        (index, ranks, locals) -> {
          int k = plan.positionsOf(index, pos);
          for (int j = 0; j < k; j++) {
            ranks[j] = plan.rankOf(pos[j]);
            locals[j] = plan.localOf(pos[j]);
          }
          return k;
        });
  }

  /**
   * The map side for one partition of the validation rows: row i goes to rank i % W at local position i / W
   * (every row once, no padding), keyed {@code W + rank} (see {@link RankPartitioner}).
   */
  static Iterator<Tuple2<Integer, byte[]>> encodeValidation(int partition, Iterator<InternalRow> rows, long first,
      long end, int world, int dim, int targetDim) {
    return new Encoder("validation input", partition, rows, first, end, world, world, dim, targetDim,
        (index, ranks, locals) -> {
          ranks[0] = (int) (index % world);
          locals[0] = index / world;
          return 1;
        });
  }

  /** How many validation rows rank {@code rank} evaluates out of {@code rows} (see {@link #encodeValidation}). */
  static long validationRowsOf(long rows, int world, int rank) {
    return rank < rows ? (rows - rank + world - 1) / world : 0;
  }

  /** Where global row {@code index} goes: up to two (rank, local position) pairs; returns how many. */
  @FunctionalInterface
  private interface Placement {
    int place(long index, int[] ranks, long[] locals);
  }

  private static final class Encoder implements Iterator<Tuple2<Integer, byte[]>> {
    private final String what;
    private final int partition;
    private final Iterator<InternalRow> rows;
    private final long first;
    private final long end;
    private final int keyOffset;
    private final Placement placement;
    private final int dim;
    private final int targetDim;
    private final int rowBytes;
    private final int chunkRows;
    private final byte[][] open; // by rank: the chunk being filled, null when none
    private final int[] used; // by rank: bytes of open[rank] filled
    private final ArrayDeque<Tuple2<Integer, byte[]>> ready = new ArrayDeque<>();
    private final int[] ranks = new int[2];
    private final long[] locals = new long[2];
    private final int featureHeader;
    private final int targetHeader;
    private long index;
    private boolean drained;

    Encoder(String what, int partition, Iterator<InternalRow> rows, long first, long end, int world, int keyOffset,
        int dim, int targetDim, Placement placement) {
      this.what = what;
      this.partition = partition;
      this.rows = rows;
      this.first = first;
      this.index = first;
      this.end = end;
      this.keyOffset = keyOffset;
      this.placement = placement;
      this.dim = dim;
      this.targetDim = targetDim;
      this.rowBytes = rowBytes(dim, targetDim);
      this.chunkRows = Math.max(1, CHUNK_BYTES / rowBytes);
      this.open = new byte[world][];
      this.used = new int[world];
      this.featureHeader = UnsafeArrayData.calculateHeaderPortionInBytes(dim);
      this.targetHeader = UnsafeArrayData.calculateHeaderPortionInBytes(Math.max(1, targetDim));
    }

    @Override
    public boolean hasNext() {
      while (ready.isEmpty() && !drained) {
        if (rows.hasNext()) {
          add(rows.next());
        } else {
          if (index != end) {
            throw new IllegalStateException(what + " partition " + partition + " has " + (index - first)
                + " rows, validation counted " + (end - first) + "; the DataFrame is not deterministic "
                + "(cache or checkpoint it before fit)");
          }
          for (int r = 0; r < open.length; r++) {
            if (used[r] > 0) {
              ready.add(new Tuple2<>(keyOffset + r, Arrays.copyOf(open[r], used[r])));
              open[r] = null;
            }
          }
          drained = true;
        }
      }
      return !ready.isEmpty();
    }

    @Override
    public Tuple2<Integer, byte[]> next() {
      if (!hasNext()) {
        throw new NoSuchElementException();
      }
      return ready.poll();
    }

    private void add(InternalRow row) {
      if (index >= end) {
        throw new IllegalStateException(what + " partition " + partition + " has more rows than validation counted; "
            + "the DataFrame is not deterministic (cache or checkpoint it before fit)");
      }
      int k = placement.place(index++, ranks, locals);
      for (int j = 0; j < k; j++) {
        int rank = ranks[j];
        if (open[rank] == null) {
          open[rank] = new byte[chunkRows * rowBytes];
          used[rank] = 0;
        }
        write(row, locals[j], open[rank], used[rank]);
        used[rank] += rowBytes;
        if (used[rank] == open[rank].length) {
          ready.add(new Tuple2<>(keyOffset + rank, open[rank]));
          open[rank] = null;
        }
      }
    }

    private void write(InternalRow row, long local, byte[] dst, int at) {
      long off = Platform.BYTE_ARRAY_OFFSET + at;
      putInt(dst, off, Math.toIntExact(local));
      off += Integer.BYTES;
      if (targetDim == 0) {
        putInt(dst, off, (int) row.getDouble(1)); // validated: a whole number in [0, classes)
        off += Integer.BYTES;
      } else {
        putFloats(row.getArray(1), targetDim, targetHeader, dst, off);
        off += (long) targetDim * Float.BYTES;
      }
      putFloats(row.getArray(0), dim, featureHeader, dst, off);
    }
  }

  private static void putInt(byte[] dst, long off, int v) {
    Platform.putInt(dst, off, LITTLE_ENDIAN ? v : Integer.reverseBytes(v));
  }

  /** n floats of a validated array into dst at offset off, little-endian: one bulk copy for Spark's binary arrays. */
  private static void putFloats(ArrayData a, int n, int header, byte[] dst, long off) {
    if (LITTLE_ENDIAN && a instanceof UnsafeArrayData u) {
      Platform.copyMemory(u.getBaseObject(), u.getBaseOffset() + header, dst, off, (long) n * Float.BYTES);
      return;
    }
    for (int i = 0; i < n; i++) {
      putInt(dst, off + (long) i * Float.BYTES, Float.floatToRawIntBits(a.getFloat(i)));
    }
  }

  /**
   * The reduce side, for tests and single-kind input: decodes all of {@code rank}'s chunks into {@code sink}
   * and returns the local position -> row map (see {@link Decoder}).
   */
  static int[] decode(Iterator<byte[]> chunks, int rank, int rowsPerRank, int dim, int targetDim, RowSink sink) {
    Decoder d = new Decoder("training rows", rank, rowsPerRank, dim, targetDim, sink);
    while (chunks.hasNext()) {
      d.accept(chunks.next());
    }
    return d.finish();
  }

  /**
   * Decodes one kind of a rank's chunks (its training or its validation rows), in any order, into a sink,
   * and keeps the map local position -> sink row. Throws naming the problem when a chunk is malformed or a
   * local position arrives twice or not at all (the input changed between validation and training).
   */
  static final class Decoder {
    private final String what;
    private final int rank;
    private final int rows;
    private final int dim;
    private final int targetDim;
    private final int rowBytes;
    private final RowSink sink;
    private final int[] local;
    private final float[] features;
    private final float[] target;
    private int stored;

    Decoder(String what, int rank, int rows, int dim, int targetDim, RowSink sink) {
      this.what = what;
      this.rank = rank;
      this.rows = rows;
      this.dim = dim;
      this.targetDim = targetDim;
      this.rowBytes = rowBytes(dim, targetDim);
      this.sink = sink;
      this.local = new int[rows];
      Arrays.fill(local, -1);
      this.features = new float[dim];
      this.target = targetDim == 0 ? null : new float[targetDim];
    }

    void accept(byte[] chunk) {
      if (chunk.length % rowBytes != 0) {
        throw new IllegalStateException("rank " + rank + " received a chunk of " + what + " of " + chunk.length
            + " bytes, not a multiple of the " + rowBytes + "-byte row; do the executors run different spark-trainer "
            + "versions?");
      }
      ByteBuffer b = ByteBuffer.wrap(chunk).order(ByteOrder.LITTLE_ENDIAN);
      FloatBuffer f = b.asFloatBuffer();
      for (int at = 0; at < chunk.length; at += rowBytes) {
        int lp = b.getInt(at);
        if (lp < 0 || lp >= rows) {
          throw new IllegalStateException("rank " + rank + " received " + what + " for local position " + lp
              + " outside [0, " + rows + "); the DataFrame changed between planning and training (cache it before "
              + "fit)");
        }
        if (local[lp] >= 0) {
          throw new IllegalStateException("rank " + rank + " received " + what + " for local position " + lp
              + " twice; the DataFrame changed between planning and training (make it deterministic, e.g. cache "
              + "it, before fit)");
        }
        int label = 0;
        int fAt = (at + Integer.BYTES * 2) / Float.BYTES;
        if (targetDim == 0) {
          label = b.getInt(at + Integer.BYTES);
        } else {
          f.get((at + Integer.BYTES) / Float.BYTES, target, 0, targetDim);
          fAt = (at + Integer.BYTES) / Float.BYTES + targetDim;
        }
        f.get(fAt, features, 0, dim);
        local[lp] = stored++;
        sink.accept(features, label, target);
      }
    }

    /** The sink row at each local position; throws when some did not arrive. */
    int[] finish() {
      if (stored != rows) {
        int missing = 0;
        while (local[missing] >= 0) {
          missing++;
        }
        throw new IllegalStateException("rank " + rank + " received " + stored + " " + what + ", the plan gives it "
            + rows + " (local position " + missing + " is missing); the DataFrame changed between planning and "
            + "training (make it deterministic, e.g. cache it, before fit)");
      }
      return local;
    }
  }

  /** Where decoded rows go (the rank's store builder); the arrays are reused for the next row. */
  @FunctionalInterface
  interface RowSink {
    void accept(float[] features, int label, float[] target);
  }
}
