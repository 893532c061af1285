package dev.sparktrainer.data;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.Float4Vector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.FixedSizeListVector;
import org.apache.arrow.vector.ipc.message.ArrowFieldNode;
import org.apache.arrow.vector.types.FloatingPointPrecision;
import org.apache.arrow.vector.types.pojo.ArrowType;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.FieldType;
import org.apache.arrow.vector.types.pojo.Schema;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.UnsafeArrayData;
import org.apache.spark.sql.catalyst.util.ArrayData;
import org.apache.spark.unsafe.Platform;

/**
 * A rank's rows held off-heap in Arrow record batches of {@code batchRows} rows each (the last one may be
 * shorter). Every batch is a {@link VectorSchemaRoot} with the columns
 * <pre>
 *   features: FixedSizeList&lt;float32&gt;[dim]      (non-null)  data buffer (batchRows, dim) row-major
 *   label:    int32                            (non-null)  classification (targetDim == 0), or
 *   target:   FixedSizeList&lt;float32&gt;[targetDim] (non-null)  regression
 * </pre>
 *
 * <p>Rows arrive through a {@link Builder} (or {@link #fromInternalRows}) and are copied in bulk: a Spark
 * {@link UnsafeArrayData} holds its floats contiguously after its header, so a row's features are one
 * {@code Platform.copyMemory} into the Arrow data buffer, never one call per element (see
 * {@code Note [bulk copies]} below). {@link #gather} copies rows straight from the Arrow data buffers
 * into the host batch arrays, one bulk copy per row and column.
 *
 * <p>The store owns a child allocator of the allocator it is given; {@link #close()} releases every buffer
 * and closes that child allocator, which throws (naming the leak) if anything is still held. Close is
 * idempotent; any other call after close throws {@link IllegalStateException}. {@link #gather} only reads
 * and may run on another thread (the prefetch thread of {@link BatchLoader}) once the store is built.
 */
public final class ArrowRowStore implements RowStore {
  /*
   * Note [bulk copies]
   * Spark's own ArrowWriter writes array<float> element by element (Float4Vector.setSafe through an
   * ArrowFieldWriter per element): ~0.85 GB/s on one core, see ../shared/SPARK-NOTES.md. Here the data
   * buffer of each batch is a slice of a raw ArrowBuf "slab" we allocate ourselves (not zeroed: every byte
   * is written before it is read) and fill with one copy per row; when a batch is full it becomes Arrow
   * vectors through loadFieldBuffers (null count 0, so Arrow makes the all-valid validity bitmaps itself).
   * Nothing is done per element.
   *
   * Note [slabs]
   * A batch's features are 1.6 MB at dim 784 x 512 rows. Allocated one by one, Arrow rounds each request
   * under its 16 MiB chunk size up to a power of two (2 MiB for 1.6 MB: 30% more than needed) and the store makes
   * one allocation per batch. Instead the builder allocates slabs holding several batches (each batch's
   * data buffer is a slice; the vectors hold references, so a slab is freed when its last batch is
   * closed) and uses the whole rounded capacity. Slabs grow 1, 2, 4, ... batches, so a small store stays
   * small, up to SLAB_MAX_BYTES = 16 MiB: in a probe here (2 cores, Java 17, Arrow's Netty allocator, thread
   * CPU time), slabs of the whole store (100 MB at dim 3072) came as fresh pages from the OS on every build
   * and the store filled at ~2.5 GB/s, against ~6 GB/s with 16 MiB slabs. Fresh pages still happen (a
   * task's first build; see benchmarks/README.md): first-touch page faults then cost about half the rate.
   * Builder#expectedRows (a rank's row count is known from the sampler plan) makes slabs full-size from
   * the start and cuts the last one to fit.
   */

  /** Default rows per Arrow record batch (SPARK-NOTES: 512-row batches beat Spark's default 10,000). */
  public static final int DEFAULT_BATCH_ROWS = 512;

  /** Largest slab, unless one batch is larger (see Note [slabs]). */
  static final long SLAB_MAX_BYTES = 16L << 20;

  private final BufferAllocator allocator; // child allocator owned by this store
  private final List<VectorSchemaRoot> batches;
  private final long[] featureAddr; // (batches) address of each batch's features data buffer
  private final long[] labelAddr; // (batches) labels (classification) or targets (regression) data buffer
  private final int rows;
  private final int dim;
  private final int targetDim;
  private final int batchRows;
  private volatile boolean closed;

  private ArrowRowStore(BufferAllocator allocator, List<VectorSchemaRoot> batches, int rows, int dim,
      int targetDim, int batchRows) {
    this.allocator = allocator;
    this.batches = batches;
    this.rows = rows;
    this.dim = dim;
    this.targetDim = targetDim;
    this.batchRows = batchRows;
    this.featureAddr = new long[batches.size()];
    this.labelAddr = new long[batches.size()];
    for (int b = 0; b < batches.size(); b++) {
      VectorSchemaRoot root = batches.get(b);
      featureAddr[b] = ((FixedSizeListVector) root.getVector(0)).getDataVector().getDataBuffer().memoryAddress();
      labelAddr[b] = targetDim == 0
          ? ((IntVector) root.getVector(1)).getDataBuffer().memoryAddress()
          : ((FixedSizeListVector) root.getVector(1)).getDataVector().getDataBuffer().memoryAddress();
    }
  }

  /**
   * Builds a store from a Spark partition's rows, in iteration order. Column 0 is {@code features:
   * array<float>} of exactly {@code dim} non-null elements; column 1 is {@code label: int}
   * ({@code targetDim == 0}) or {@code target: array<float>} of {@code targetDim} elements. Rows may be
   * reused by the iterator (as {@code queryExecution().toRdd()} does): each is copied before the next.
   *
   * @param batchRows rows per Arrow record batch, e.g. {@link #DEFAULT_BATCH_ROWS}
   * @param allocator parent of the store's own child allocator (e.g. a {@code RootAllocator}); not closed
   * @throws IllegalArgumentException naming the row number (0-based, in iteration order) for a null
   *     features/label/target, a wrong array length, or a null array element; nothing is left allocated
   */
  public static ArrowRowStore fromInternalRows(Iterator<InternalRow> rows, int dim, int targetDim, int batchRows,
      BufferAllocator allocator) {
    try (Builder b = builder(dim, targetDim, batchRows, allocator)) {
      while (rows.hasNext()) {
        b.appendRow(rows.next());
      }
      return b.build();
    }
  }

  /**
   * A builder that appends rows one at a time. Close it in a {@code finally} (try-with-resources): if
   * {@link Builder#build()} was not reached, close releases everything appended so far.
   *
   * @param targetDim floats per regression target, or 0 for int class labels
   */
  public static Builder builder(int dim, int targetDim, int batchRows, BufferAllocator allocator) {
    return new Builder(dim, targetDim, batchRows, allocator);
  }

  @Override
  public int rows() {
    return rows;
  }

  @Override
  public int dim() {
    return dim;
  }

  @Override
  public int targetDim() {
    return targetDim;
  }

  /** Rows per record batch (every batch but the last holds exactly this many). */
  public int batchRows() {
    return batchRows;
  }

  /** Number of Arrow record batches. */
  public int batchCount() {
    return batches.size();
  }

  /**
   * Record batch {@code b} (rows {@code b*batchRows ..}), owned by this store: read it, do not close or
   * modify it, and do not use it after the store is closed.
   */
  public VectorSchemaRoot batch(int b) {
    checkOpen();
    return batches.get(b);
  }

  /** Bytes of Arrow memory held by this store. */
  public long allocatedBytes() {
    checkOpen();
    return allocator.getAllocatedMemory();
  }

  @Override
  public void gather(int[] idx, int from, int count, float[] features, int[] labels, float[] targets) {
    checkOpen();
    if (from < 0 || count < 0 || from + count > idx.length) {
      throw new IndexOutOfBoundsException("idx[" + from + ".." + (from + count) + ") of " + idx.length);
    }
    checkCapacity("features", features.length, count, dim);
    if (targetDim == 0) {
      checkCapacity("labels", labels.length, count, 1);
    } else {
      checkCapacity("targets", targets.length, count, targetDim);
    }
    final long rowBytes = (long) dim * Float.BYTES;
    final long targetBytes = (long) targetDim * Float.BYTES;
    for (int k = 0; k < count; k++) {
      int r = idx[from + k];
      if (r < 0 || r >= rows) {
        throw new IndexOutOfBoundsException("row " + r + " (idx[" + (from + k) + "]) outside [0, " + rows + ")");
      }
      int b = r / batchRows;
      int i = r - b * batchRows;
      Platform.copyMemory(null, featureAddr[b] + i * rowBytes, features,
          Platform.FLOAT_ARRAY_OFFSET + k * rowBytes, rowBytes);
      if (targetDim == 0) {
        labels[k] = Platform.getInt(null, labelAddr[b] + (long) i * Integer.BYTES);
      } else {
        Platform.copyMemory(null, labelAddr[b] + i * targetBytes, targets,
            Platform.FLOAT_ARRAY_OFFSET + k * targetBytes, targetBytes);
      }
    }
  }

  private static void checkCapacity(String name, int length, int count, int width) {
    if ((long) count * width > length) {
      throw new IllegalArgumentException(name + " array holds " + length + " values, " + count + " rows need "
          + (long) count * width);
    }
  }

  private void checkOpen() {
    if (closed) {
      throw new IllegalStateException("ArrowRowStore is closed");
    }
  }

  /**
   * Releases all Arrow memory and closes the store's child allocator. Idempotent.
   *
   * @throws IllegalStateException from the allocator if memory is still held (a leak)
   */
  @Override
  public void close() {
    if (closed) {
      return;
    }
    closed = true;
    try {
      for (VectorSchemaRoot root : batches) {
        root.close();
      }
      batches.clear();
    } finally {
      allocator.close();
    }
  }

  /** The Arrow schema of the record batches. */
  static Schema schema(int dim, int targetDim) {
    Field features = fixedSizeFloatList("features", dim);
    Field label = targetDim == 0
        ? new Field("label", FieldType.notNullable(new ArrowType.Int(32, true)), null)
        : fixedSizeFloatList("target", targetDim);
    return new Schema(List.of(features, label));
  }

  private static Field fixedSizeFloatList(String name, int size) {
    Field element = new Field("element",
        FieldType.notNullable(new ArrowType.FloatingPoint(FloatingPointPrecision.SINGLE)), null);
    return new Field(name, FieldType.notNullable(new ArrowType.FixedSizeList(size)), List.of(element));
  }

  /**
   * Appends rows into off-heap batches; {@link #build()} hands them to a new {@link ArrowRowStore}. Not
   * thread-safe. Close it in a {@code finally}: it releases whatever {@code build()} did not take.
   */
  public static final class Builder implements AutoCloseable {
    private final int dim;
    private final int targetDim;
    private final int batchRows;
    private final int featureHeader; // bytes before the first element of an UnsafeArrayData of dim floats
    private final int targetHeader; // same for targetDim floats
    private final Schema schema;
    private BufferAllocator allocator; // null once built or closed
    private final List<VectorSchemaRoot> sealed = new ArrayList<>();
    private final long featureBatchBytes; // batchRows * dim * 4
    private final long labelBatchBytes; // batchRows * 4, or batchRows * targetDim * 4
    private ArrowBuf featureSlab; // (slabBatches, batchRows, dim) float32; null when none is held
    private ArrowBuf labelSlab; // (slabBatches, batchRows) int32 or (slabBatches, batchRows, targetDim) float32
    private int slabBatches; // batches that fit in the current slabs
    private int slabUsed; // batches of the current slabs opened so far
    private int grownSlabs; // slabs allocated without the hint, for geometric growth
    private long expectedRows; // hint: announced rows not yet given a slab (0: unknown or all placed)
    private boolean batchOpen; // the current batch has rows (slice slabUsed - 1)
    private long featureBase; // address of the current batch's features
    private long labelBase; // address of the current batch's labels/targets
    private int inBatch; // rows in the current batch
    private int rows; // rows appended in all

    private Builder(int dim, int targetDim, int batchRows, BufferAllocator parent) {
      if (dim <= 0) {
        throw new IllegalArgumentException("dim must be > 0, got " + dim);
      }
      if (targetDim < 0) {
        throw new IllegalArgumentException("targetDim must be >= 0 (0 = class labels), got " + targetDim);
      }
      if (batchRows <= 0) {
        throw new IllegalArgumentException("batchRows must be > 0, got " + batchRows);
      }
      if ((long) batchRows * Math.max(dim, targetDim) > Integer.MAX_VALUE) {
        throw new IllegalArgumentException("batchRows " + batchRows + " x " + Math.max(dim, targetDim)
            + " floats exceeds one Arrow vector; use fewer batchRows");
      }
      if (parent == null) {
        throw new IllegalArgumentException("allocator is null: pass a RootAllocator or a child of one");
      }
      this.dim = dim;
      this.targetDim = targetDim;
      this.batchRows = batchRows;
      this.featureHeader = UnsafeArrayData.calculateHeaderPortionInBytes(dim);
      this.targetHeader = UnsafeArrayData.calculateHeaderPortionInBytes(Math.max(targetDim, 1));
      this.schema = schema(dim, targetDim);
      this.featureBatchBytes = (long) batchRows * dim * Float.BYTES;
      this.labelBatchBytes = (long) batchRows * (targetDim == 0 ? Integer.BYTES : targetDim * Float.BYTES);
      if (featureBatchBytes > Integer.MAX_VALUE) {
        throw new IllegalArgumentException("one batch of " + batchRows + " rows x " + dim + " floats is "
            + featureBatchBytes + " bytes, more than one Arrow buffer holds; use fewer batchRows");
      }
      this.allocator = parent.newChildAllocator("ArrowRowStore", 0, Long.MAX_VALUE);
    }

    /**
     * Optional: the number of rows that will be appended (e.g. the rank's row count from the sampler
     * plan), so that slabs are full-size from the start and the last one is cut to fit. Default: unknown,
     * slabs grow 1, 2, 4, ... batches up to 16 MiB and the last one may be partly empty. More or fewer
     * rows than announced are accepted.
     */
    public Builder expectedRows(long n) {
      checkOpen();
      if (n < 0) {
        throw new IllegalArgumentException("expectedRows must be >= 0, got " + n);
      }
      if (rows > 0) {
        throw new IllegalStateException("expectedRows must be set before the first row is appended");
      }
      expectedRows = n;
      return this;
    }

    /** Rows appended so far. */
    public int rows() {
      return rows;
    }

    /**
     * Appends one Spark row: column 0 {@code features: array<float>}, column 1 {@code label: int} or
     * {@code target: array<float>}. The row is copied; the caller may reuse it.
     *
     * @throws IllegalArgumentException naming the row number for null values or wrong lengths
     */
    public Builder appendRow(InternalRow row) {
      checkOpen();
      if (row.numFields() < 2) {
        throw new IllegalArgumentException("row " + rows + " has " + row.numFields()
            + " columns, expected 2 (features, " + (targetDim == 0 ? "label" : "target") + ")");
      }
      if (row.isNullAt(0)) {
        throw new IllegalArgumentException("row " + rows + ": features is null");
      }
      if (row.isNullAt(1)) {
        throw new IllegalArgumentException("row " + rows + ": " + (targetDim == 0 ? "label" : "target") + " is null");
      }
      ArrayData features = row.getArray(0);
      ArrayData target = targetDim == 0 ? null : row.getArray(1);
      int label = targetDim == 0 ? row.getInt(1) : 0;
      checkArray(features, dim, featureHeader, "features");
      if (target != null) {
        checkArray(target, targetDim, targetHeader, "target");
      }
      // Validated: now write (a failure above leaves the builder unchanged).
      openBatchIfNeeded();
      long rowOffset = (long) inBatch * dim * Float.BYTES;
      copyFloats(features, featureHeader, dim, featureBase + rowOffset);
      if (target == null) {
        Platform.putInt(null, labelBase + (long) inBatch * Integer.BYTES, label);
      } else {
        copyFloats(target, targetHeader, targetDim, labelBase + (long) inBatch * targetDim * Float.BYTES);
      }
      return advance();
    }

    /** Appends one classification row from Java arrays (copied). */
    public Builder append(float[] features, int label) {
      checkOpen();
      if (targetDim != 0) {
        throw new IllegalStateException("this store holds regression targets (targetDim " + targetDim
            + "), not class labels");
      }
      checkLength(features, dim, "features");
      openBatchIfNeeded();
      Platform.copyMemory(features, Platform.FLOAT_ARRAY_OFFSET, null,
          featureBase + (long) inBatch * dim * Float.BYTES, (long) dim * Float.BYTES);
      Platform.putInt(null, labelBase + (long) inBatch * Integer.BYTES, label);
      return advance();
    }

    /** Appends one regression row from Java arrays (copied). */
    public Builder append(float[] features, float[] target) {
      checkOpen();
      if (targetDim == 0) {
        throw new IllegalStateException("this store holds class labels (targetDim 0), not regression targets");
      }
      checkLength(features, dim, "features");
      checkLength(target, targetDim, "target");
      openBatchIfNeeded();
      Platform.copyMemory(features, Platform.FLOAT_ARRAY_OFFSET, null,
          featureBase + (long) inBatch * dim * Float.BYTES, (long) dim * Float.BYTES);
      Platform.copyMemory(target, Platform.FLOAT_ARRAY_OFFSET, null,
          labelBase + (long) inBatch * targetDim * Float.BYTES, (long) targetDim * Float.BYTES);
      return advance();
    }

    /**
     * Seals the last batch and returns the store, which now owns all memory; the builder is spent (its
     * close does nothing). An empty store (0 rows) is allowed.
     */
    public ArrowRowStore build() {
      checkOpen();
      sealBatch();
      releaseSlabs(); // the batches hold the memory they use
      BufferAllocator a = allocator;
      allocator = null;
      ArrowRowStore store = new ArrowRowStore(a, new ArrayList<>(sealed), rows, dim, targetDim, batchRows);
      sealed.clear();
      return store;
    }

    /** Releases everything appended unless {@link #build()} took it. Idempotent. */
    @Override
    public void close() {
      if (allocator == null) {
        return;
      }
      BufferAllocator a = allocator;
      allocator = null;
      try {
        for (VectorSchemaRoot root : sealed) {
          root.close();
        }
        sealed.clear();
        releaseSlabs();
      } finally {
        a.close();
      }
    }

    private void checkOpen() {
      if (allocator == null) {
        throw new IllegalStateException("ArrowRowStore.Builder was already built or closed");
      }
    }

    private void checkArray(ArrayData a, int expected, int header, String name) {
      int n = a.numElements();
      if (n != expected) {
        throw new IllegalArgumentException("row " + rows + ": " + name + " has " + n + " elements, expected "
            + expected);
      }
      if (a instanceof UnsafeArrayData u) {
        // Memory safety: never read past the array, whatever its element type claims to be.
        if (u.getSizeInBytes() < header + (long) n * Float.BYTES) {
          throw new IllegalArgumentException("row " + rows + ": " + name + " holds " + u.getSizeInBytes()
              + " bytes, too few for " + n + " floats (is the column array<float>?)");
        }
        // The null bitset: (header - 8) bytes after numElements, one bit per element.
        Object base = u.getBaseObject();
        long bits = u.getBaseOffset() + 8;
        for (int w = 0; w < (header - 8) / 8; w++) {
          long word = Platform.getLong(base, bits + 8L * w);
          if (word != 0) {
            throw new IllegalArgumentException("row " + rows + ": " + name + " has a null element at index "
                + (64 * w + Long.numberOfTrailingZeros(word)));
          }
        }
      } else {
        for (int i = 0; i < n; i++) {
          if (a.isNullAt(i)) {
            throw new IllegalArgumentException("row " + rows + ": " + name + " has a null element at index " + i);
          }
        }
      }
    }

    private static void checkLength(float[] a, int expected, String name) {
      if (a.length != expected) {
        throw new IllegalArgumentException(name + " has " + a.length + " elements, expected " + expected);
      }
    }

    /** Copies n floats of a validated array to dst (off-heap address). */
    private static void copyFloats(ArrayData a, int header, int n, long dst) {
      if (a instanceof UnsafeArrayData u) {
        Platform.copyMemory(u.getBaseObject(), u.getBaseOffset() + header, null, dst, (long) n * Float.BYTES);
      } else {
        float[] f = a.toFloatArray();
        Platform.copyMemory(f, Platform.FLOAT_ARRAY_OFFSET, null, dst, (long) n * Float.BYTES);
      }
    }

    private void openBatchIfNeeded() {
      if (batchOpen) {
        return;
      }
      if (featureSlab == null || slabUsed == slabBatches) {
        newSlabs();
      }
      featureBase = featureSlab.memoryAddress() + slabUsed * featureBatchBytes;
      labelBase = labelSlab.memoryAddress() + slabUsed * labelBatchBytes;
      slabUsed++;
      inBatch = 0;
      batchOpen = true;
    }

    /** Drops our references to the current slabs (sealed batches keep theirs) and allocates the next. */
    private void newSlabs() {
      releaseSlabs();
      long want = expectedRows > 0
          ? (expectedRows + batchRows - 1) / batchRows // the rest of the announced rows
          : 1L << Math.min(grownSlabs++, 30); // unknown: grow geometrically
      want = Math.max(1, Math.min(want, SLAB_MAX_BYTES / featureBatchBytes));
      boolean ok = false;
      try {
        featureSlab = allocator.buffer(want * featureBatchBytes);
        // Arrow may round the request up (to a power of two under 16 MiB): use what we got.
        slabBatches = (int) Math.min(featureSlab.capacity() / featureBatchBytes, Integer.MAX_VALUE);
        labelSlab = allocator.buffer(slabBatches * labelBatchBytes);
        slabUsed = 0;
        if (expectedRows > 0) {
          expectedRows = Math.max(0, expectedRows - (long) slabBatches * batchRows);
        }
        ok = true;
      } finally {
        if (!ok) {
          releaseSlabs();
        }
      }
    }

    private Builder advance() {
      if (rows == Integer.MAX_VALUE) {
        throw new IllegalStateException("more than " + Integer.MAX_VALUE + " rows in one store");
      }
      inBatch++;
      rows++;
      if (inBatch == batchRows) {
        sealBatch();
      }
      return this;
    }

    /** Turns the open batch (inBatch rows) into a record batch: slices of the slabs, no copy. */
    private void sealBatch() {
      if (!batchOpen) {
        return;
      }
      int n = inBatch;
      ArrowBuf features = featureSlab.slice((slabUsed - 1) * featureBatchBytes, featureBatchBytes);
      ArrowBuf labels = labelSlab.slice((slabUsed - 1) * labelBatchBytes, labelBatchBytes);
      batchOpen = false;
      inBatch = 0;
      VectorSchemaRoot root = VectorSchemaRoot.create(schema, allocator);
      try {
        ArrowBuf none = allocator.getEmpty(); // null count 0: Arrow builds all-valid bitmaps itself
        FixedSizeListVector fv = (FixedSizeListVector) root.getVector(0);
        fv.loadFieldBuffers(new ArrowFieldNode(n, 0), List.of(none));
        ((Float4Vector) fv.getDataVector()).loadFieldBuffers(new ArrowFieldNode((long) n * dim, 0),
            Arrays.asList(none, features));
        if (targetDim == 0) {
          ((IntVector) root.getVector(1)).loadFieldBuffers(new ArrowFieldNode(n, 0), Arrays.asList(none, labels));
        } else {
          FixedSizeListVector tv = (FixedSizeListVector) root.getVector(1);
          tv.loadFieldBuffers(new ArrowFieldNode(n, 0), List.of(none));
          ((Float4Vector) tv.getDataVector()).loadFieldBuffers(new ArrowFieldNode((long) n * targetDim, 0),
              Arrays.asList(none, labels));
        }
        root.setRowCount(n);
        sealed.add(root);
        root = null;
      } finally {
        if (root != null) {
          root.close();
        }
      }
    }

    private void releaseSlabs() {
      batchOpen = false;
      inBatch = 0;
      if (featureSlab != null) {
        featureSlab.close();
        featureSlab = null;
      }
      if (labelSlab != null) {
        labelSlab.close();
        labelSlab = null;
      }
    }
  }
}
