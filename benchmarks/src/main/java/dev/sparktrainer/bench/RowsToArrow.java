package dev.sparktrainer.bench;

import dev.sparktrainer.data.ArrowRowStore;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.expressions.UnsafeArrayData;
import org.apache.spark.sql.catalyst.expressions.UnsafeProjection;
import org.apache.spark.sql.catalyst.expressions.UnsafeRow;
import org.apache.spark.sql.execution.arrow.ArrowConverters$;
import org.apache.spark.sql.execution.arrow.ArrowWriter;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.ArrowUtils;
import org.apache.spark.unsafe.Platform;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Threads;
import org.openjdk.jmh.annotations.Warmup;
import org.openjdk.jmh.infra.Blackhole;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Rows -> Arrow record batches inside a task, one core: what a training task does with its partition before
 * the first step. Input: {@value #ROWS} Spark {@code UnsafeRow}s {@code (features: array<float>[dim], label:
 * int)} as {@code queryExecution().toRdd()} hands them over (arrays are {@code UnsafeArrayData}); batches of
 * {@code batchRows} rows. Scores are rows/s (one operation = one row); payload GB/s = rows/s x dim x 4 B.
 *
 * <ul>
 *   <li>{@code arrowRowStore}: our path, {@link ArrowRowStore#fromInternalRows} (validation, one bulk copy per
 *       row into fresh off-heap Arrow buffers, then Arrow vectors per batch), including allocating and freeing
 *       the store's memory.
 *   <li>{@code arrowRowStoreRecycled}: the same, with an allocator that hands freed memory out again
 *       ({@link RecyclingAllocationManager}): the conversion without the OS's first-touch cost of fresh pages.
 *   <li>{@code sparkArrowWriter}: Spark's {@code ArrowWriter} into a reused {@code VectorSchemaRoot} (its
 *       per-element {@code setSafe} path), finish + reset every batch.
 *   <li>{@code sparkArrowConverters}: Spark's {@code ArrowConverters.toBatchWithSchemaIterator}, as Spark's
 *       own Arrow export does it (ArrowWriter + IPC serialization to bytes).
 *   <li>{@code bulkCopyCeiling}: the same per-row copies into one pre-touched, reused off-heap buffer the size
 *       of the store (ROWS x dim floats), no checks, no Arrow bookkeeping, no fresh memory: the ceiling for
 *       the copy itself.
 * </ul>
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Threads(1)
@Fork(value = 1, jvmArgsAppend = {
    "-Xms3g", "-Xmx3g", "-XX:+AlwaysPreTouch",
    "--add-opens=java.base/java.lang=ALL-UNNAMED", "--add-opens=java.base/java.lang.invoke=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED", "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED", "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED", "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED", "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED", "--add-opens=java.base/sun.security.action=ALL-UNNAMED",
    "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED", "-Djdk.reflect.useDirectMethodHandle=false",
    "-Dio.netty.tryReflectionSetAccessible=true"})
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
public class RowsToArrow {
  /** Rows per invocation (one JMH operation = one row). */
  public static final int ROWS = 8192;

  @Param({"784", "3072"})
  public int dim;

  @Param({"512"})
  public int batchRows;

  private StructType schema;
  private UnsafeRow[] rows; // (ROWS) distinct rows, each (features[dim], label)
  private BufferAllocator allocator;
  private BufferAllocator recycling; // RecyclingAllocationManager
  private VectorSchemaRoot writerRoot; // Spark ArrowWriter's reused batch
  private ArrowWriter writer;
  private ArrowBuf ceiling; // (ROWS, dim) float32, reused

  @Setup(Level.Trial)
  public void setUp() {
    schema = new StructType()
        .add("features", DataTypes.createArrayType(DataTypes.FloatType, false), false)
        .add("label", DataTypes.IntegerType, false);
    UnsafeProjection proj = UnsafeProjection.create(schema);
    SplittableRandom rng = new SplittableRandom(42);
    rows = new UnsafeRow[ROWS];
    float[] f = new float[dim];
    for (int r = 0; r < ROWS; r++) {
      for (int i = 0; i < dim; i++) {
        f[i] = (float) rng.nextGaussian();
      }
      InternalRow g = new GenericInternalRow(new Object[] {UnsafeArrayData.fromPrimitiveArray(f), r % 10});
      rows[r] = proj.apply(g).copy();
    }
    allocator = new RootAllocator(Long.MAX_VALUE);
    recycling = RecyclingAllocationManager.rootAllocator();
    writerRoot = VectorSchemaRoot.create(ArrowUtils.toArrowSchema(schema, "UTC", true, false), allocator);
    writer = ArrowWriter.create(writerRoot);
    ceiling = allocator.buffer((long) ROWS * dim * Float.BYTES);
    ceiling.setZero(0, ceiling.capacity()); // touch it
  }

  @TearDown(Level.Trial)
  public void tearDown() {
    ceiling.close();
    writerRoot.close();
    allocator.close(); // throws on a leak
    recycling.close();
  }

  @Benchmark
  @OperationsPerInvocation(ROWS)
  public long arrowRowStore() {
    try (ArrowRowStore store = ArrowRowStore.fromInternalRows(Arrays.<InternalRow>asList(rows).iterator(), dim, 0,
        batchRows, allocator)) {
      return store.rows() + store.batch(store.batchCount() - 1).getRowCount();
    }
  }

  @Benchmark
  @OperationsPerInvocation(ROWS)
  public long arrowRowStoreRecycled() {
    try (ArrowRowStore store = ArrowRowStore.fromInternalRows(Arrays.<InternalRow>asList(rows).iterator(), dim, 0,
        batchRows, recycling)) {
      return store.rows() + store.batch(store.batchCount() - 1).getRowCount();
    }
  }

  @Benchmark
  @OperationsPerInvocation(ROWS)
  public void sparkArrowWriter(Blackhole bh) {
    int n = 0;
    for (UnsafeRow row : rows) {
      writer.write(row);
      if (++n == batchRows) {
        writer.finish();
        bh.consume(writerRoot.getRowCount());
        writer.reset();
        n = 0;
      }
    }
    if (n > 0) {
      writer.finish();
      bh.consume(writerRoot.getRowCount());
      writer.reset();
    }
  }

  @Benchmark
  @OperationsPerInvocation(ROWS)
  public long sparkArrowConverters() throws Exception {
    scala.collection.Iterator<InternalRow> in =
        CollectionConverters.asScala(Arrays.<InternalRow>asList(rows).iterator());
    // private[sql] in Scala: no static forwarder, so through the module instance.
    scala.collection.Iterator<byte[]> batches = ArrowConverters$.MODULE$.toBatchWithSchemaIterator(in, schema,
        batchRows, Long.MAX_VALUE, "UTC", true, false);
    long bytes = 0;
    try {
      while (batches.hasNext()) {
        bytes += batches.next().length;
      }
    } finally {
      ((AutoCloseable) batches).close();
    }
    return bytes;
  }

  @Benchmark
  @OperationsPerInvocation(ROWS)
  public long bulkCopyCeiling() {
    long dst = ceiling.memoryAddress();
    long rowBytes = (long) dim * Float.BYTES;
    long header = UnsafeArrayData.calculateHeaderPortionInBytes(dim);
    long sum = 0;
    for (int r = 0; r < ROWS; r++) {
      UnsafeRow row = rows[r];
      UnsafeArrayData a = row.getArray(0);
      Platform.copyMemory(a.getBaseObject(), a.getBaseOffset() + header, null, dst + r * rowBytes, rowBytes);
      sum += row.getInt(1);
    }
    return sum;
  }
}
