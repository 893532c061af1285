package dev.sparktrainer.data;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.SplittableRandom;
import java.util.function.IntFunction;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.Float4Vector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.FixedSizeListVector;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.expressions.UnsafeArrayData;
import org.apache.spark.sql.catalyst.expressions.UnsafeProjection;
import org.apache.spark.sql.catalyst.expressions.UnsafeRow;
import org.apache.spark.sql.catalyst.util.GenericArrayData;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * ArrowRowStore against the source rows: every comparison is bitwise (floats as raw int bits, NaN payloads,
 * -0 and subnormals included), through both {@code gather} and the plain Arrow vector API.
 */
class ArrowRowStoreTest {
  private static final StructType CLASSIFICATION = new StructType()
      .add("features", DataTypes.createArrayType(DataTypes.FloatType, true), true)
      .add("label", DataTypes.IntegerType, true);
  private static final StructType REGRESSION = new StructType()
      .add("features", DataTypes.createArrayType(DataTypes.FloatType, true), true)
      .add("target", DataTypes.createArrayType(DataTypes.FloatType, true), true);

  private final SplittableRandom rng = new SplittableRandom(7);
  private BufferAllocator root;

  @BeforeEach
  void open() {
    root = new RootAllocator(Long.MAX_VALUE);
  }

  @AfterEach
  void closeAllocator() {
    assertEquals(0, root.getAllocatedMemory(), "Arrow memory left allocated");
    root.close(); // throws if anything leaked
  }

  // ---- helpers ----

  /** Random floats from random bit patterns: NaNs with payloads, infinities, -0, subnormals. */
  private float[] randomBits(int n) {
    float[] a = new float[n];
    for (int i = 0; i < n; i++) {
      a[i] = Float.intBitsToFloat(rng.nextInt());
    }
    return a;
  }

  /**
   * Rows as Spark hands them to a task: one UnsafeProjection whose output UnsafeRow is reused for every row
   * (like queryExecution().toRdd()), arrays inside it UnsafeArrayData.
   */
  private static Iterator<InternalRow> unsafeRows(StructType schema, int n, IntFunction<Object[]> values) {
    UnsafeProjection proj = UnsafeProjection.create(schema);
    return new Iterator<>() {
      int i;

      @Override
      public boolean hasNext() {
        return i < n;
      }

      @Override
      public InternalRow next() {
        return proj.apply(new GenericInternalRow(values.apply(i++)));
      }
    };
  }

  private static int[] bits(float[] a, int from, int n) {
    int[] b = new int[n];
    for (int i = 0; i < n; i++) {
      b[i] = Float.floatToRawIntBits(a[from + i]);
    }
    return b;
  }

  private static void assertBitwise(float[] expected, int eFrom, float[] actual, int aFrom, int n, String what) {
    int[] e = bits(expected, eFrom, n);
    int[] a = bits(actual, aFrom, n);
    for (int i = 0; i < n; i++) {
      if (e[i] != a[i]) {
        throw new AssertionError(what + " element " + i + ": expected bits " + Integer.toHexString(e[i])
            + " got " + Integer.toHexString(a[i]));
      }
    }
  }

  /** Gathers random index sets (repeats allowed) and compares with the source rows. */
  private void checkGather(ArrowRowStore store, float[][] features, int[] labels, float[][] targets) {
    int dim = store.dim();
    int td = store.targetDim();
    int rows = store.rows();
    for (int trial = 0; trial < 20; trial++) {
      int count = 1 + rng.nextInt(Math.min(rows, 300));
      int from = rng.nextInt(5);
      int[] idx = new int[from + count + rng.nextInt(3)];
      for (int k = 0; k < idx.length; k++) {
        idx[k] = rng.nextInt(rows);
      }
      if (trial == 0) {
        idx[from] = 0; // first and last rows, both ends of a batch
        idx[from + count - 1] = rows - 1;
      }
      float[] f = new float[count * dim];
      int[] l = td == 0 ? new int[count] : null;
      float[] t = td == 0 ? null : new float[count * td];
      store.gather(idx, from, count, f, l, t);
      for (int k = 0; k < count; k++) {
        int r = idx[from + k];
        assertBitwise(features[r], 0, f, k * dim, dim, "row " + r + " features");
        if (td == 0) {
          assertEquals(labels[r], l[k], "row " + r + " label");
        } else {
          assertBitwise(targets[r], 0, t, k * td, td, "row " + r + " target");
        }
      }
    }
  }

  /** Reads every batch through the ordinary Arrow API (validity included): the slow reference. */
  private static void checkArrowVectors(ArrowRowStore store, float[][] features, int[] labels, float[][] targets) {
    int dim = store.dim();
    int td = store.targetDim();
    int seen = 0;
    for (int b = 0; b < store.batchCount(); b++) {
      VectorSchemaRoot batch = store.batch(b);
      int n = batch.getRowCount();
      assertEquals(b < store.batchCount() - 1 ? store.batchRows() : store.rows() - seen, n, "rows of batch " + b);
      FixedSizeListVector fv = (FixedSizeListVector) batch.getVector("features");
      Float4Vector fe = (Float4Vector) fv.getDataVector();
      assertEquals(n, fv.getValueCount());
      assertEquals(n * dim, fe.getValueCount());
      assertEquals(0, fv.getNullCount());
      assertEquals(0, fe.getNullCount());
      for (int i = 0; i < n; i++) {
        int r = seen + i;
        assertFalse(fv.isNull(i));
        for (int j = 0; j < dim; j++) {
          assertEquals(Float.floatToRawIntBits(features[r][j]), Float.floatToRawIntBits(fe.get(i * dim + j)),
              "row " + r + " features[" + j + "] via Arrow API");
        }
        if (td == 0) {
          IntVector lv = (IntVector) batch.getVector("label");
          assertEquals(0, lv.getNullCount());
          assertEquals(labels[r], lv.get(i), "row " + r + " label via Arrow API");
        } else {
          Float4Vector te = (Float4Vector) ((FixedSizeListVector) batch.getVector("target")).getDataVector();
          assertEquals(0, te.getNullCount());
          for (int j = 0; j < td; j++) {
            assertEquals(Float.floatToRawIntBits(targets[r][j]), Float.floatToRawIntBits(te.get(i * td + j)));
          }
        }
      }
      seen += n;
    }
    assertEquals(store.rows(), seen);
  }

  // ---- tests ----

  @Test
  void classificationFromUnsafeRowsIsBitwiseExact() {
    for (int dim : new int[] {1, 37, 64, 130, 784}) {
      int rows = 3 * 64 + 5; // three full batches and a short one
      float[][] features = new float[rows][];
      int[] labels = new int[rows];
      for (int r = 0; r < rows; r++) {
        features[r] = randomBits(dim);
        labels[r] = rng.nextInt();
      }
      Iterator<InternalRow> it = unsafeRows(CLASSIFICATION, rows,
          r -> new Object[] {UnsafeArrayData.fromPrimitiveArray(features[r]), labels[r]});
      try (ArrowRowStore store = ArrowRowStore.fromInternalRows(it, dim, 0, 64, root)) {
        assertEquals(rows, store.rows());
        assertEquals(dim, store.dim());
        assertEquals(0, store.targetDim());
        assertEquals(4, store.batchCount());
        assertTrue(store.allocatedBytes() >= (long) rows * dim * Float.BYTES);
        checkGather(store, features, labels, null);
        checkArrowVectors(store, features, labels, null);
      }
    }
  }

  @Test
  void rowsReallyAreUnsafe() {
    Iterator<InternalRow> it = unsafeRows(CLASSIFICATION, 1,
        r -> new Object[] {UnsafeArrayData.fromPrimitiveArray(new float[] {1f, 2f}), 3});
    InternalRow row = it.next();
    assertTrue(row instanceof UnsafeRow);
    assertTrue(row.getArray(0) instanceof UnsafeArrayData);
  }

  @Test
  void regressionTargetsAreBitwiseExact() {
    int dim = 50;
    int td = 3;
    int rows = 1000;
    float[][] features = new float[rows][];
    float[][] targets = new float[rows][];
    for (int r = 0; r < rows; r++) {
      features[r] = randomBits(dim);
      targets[r] = randomBits(td);
    }
    Iterator<InternalRow> it = unsafeRows(REGRESSION, rows, r -> new Object[] {
        UnsafeArrayData.fromPrimitiveArray(features[r]), UnsafeArrayData.fromPrimitiveArray(targets[r])});
    try (ArrowRowStore store = ArrowRowStore.fromInternalRows(it, dim, td, 128, root)) {
      assertEquals(rows, store.rows());
      assertEquals(td, store.targetDim());
      assertEquals(8, store.batchCount());
      checkGather(store, features, null, targets);
      checkArrowVectors(store, features, null, targets);
    }
  }

  @Test
  void genericArraysAndJavaArraysTakeTheSamePath() {
    int dim = 20;
    int rows = 100;
    float[][] features = new float[rows][];
    int[] labels = new int[rows];
    for (int r = 0; r < rows; r++) {
      features[r] = randomBits(dim);
      labels[r] = rng.nextInt(10);
    }
    // Half the rows as GenericInternalRow with GenericArrayData (not unsafe), half as float[].
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(dim, 0, 16, root)) {
      for (int r = 0; r < rows; r++) {
        if (r % 2 == 0) {
          b.appendRow(new GenericInternalRow(new Object[] {new GenericArrayData(features[r]), labels[r]}));
        } else {
          b.append(features[r], labels[r]);
        }
      }
      assertEquals(rows, b.rows());
      try (ArrowRowStore store = b.build()) {
        checkGather(store, features, labels, null);
        checkArrowVectors(store, features, labels, null);
        assertThrows(IllegalStateException.class, () -> b.append(features[0], 0), "builder spent after build");
      }
    }
  }

  @Test
  void javaArrayRegression() {
    float[][] features = {randomBits(4), randomBits(4), randomBits(4)};
    float[][] targets = {randomBits(2), randomBits(2), randomBits(2)};
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(4, 2, 2, root)) {
      for (int r = 0; r < 3; r++) {
        b.append(features[r], targets[r]);
      }
      IllegalStateException e = assertThrows(IllegalStateException.class, () -> b.append(features[0], 1));
      assertTrue(e.getMessage().contains("regression"), e.getMessage());
      try (ArrowRowStore store = b.build()) {
        checkGather(store, features, null, targets);
        checkArrowVectors(store, features, null, targets);
      }
    }
  }

  @Test
  void wrongLengthRowIsNamedAndNothingLeaks() {
    int dim = 8;
    Iterator<InternalRow> it = unsafeRows(CLASSIFICATION, 200, r -> new Object[] {
        UnsafeArrayData.fromPrimitiveArray(new float[r == 137 ? dim - 1 : dim]), 1});
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> ArrowRowStore.fromInternalRows(it, dim, 0, 32, root));
    assertEquals("row 137: features has 7 elements, expected 8", e.getMessage());
    // closeAllocator() then checks that the four sealed batches and the open one were released
  }

  @Test
  void wrongTargetLength() {
    Iterator<InternalRow> it = unsafeRows(REGRESSION, 3, r -> new Object[] {
        UnsafeArrayData.fromPrimitiveArray(new float[4]), UnsafeArrayData.fromPrimitiveArray(new float[r + 1])});
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> ArrowRowStore.fromInternalRows(it, 4, 2, 2, root));
    assertEquals("row 0: target has 1 elements, expected 2", e.getMessage());
  }

  @Test
  void nullsAreNamed() {
    float[] ok = {1f, 2f, 3f};
    Object[][] cases = {
        {null, 1, "row 2: features is null"},
        {UnsafeArrayData.fromPrimitiveArray(ok), null, "row 2: label is null"},
        {new GenericArrayData(new Object[] {1f, null, 3f}), 1, "row 2: features has a null element at index 1"},
    };
    for (Object[] c : cases) {
      List<Object[]> values = new ArrayList<>();
      values.add(new Object[] {UnsafeArrayData.fromPrimitiveArray(ok), 0});
      values.add(new Object[] {UnsafeArrayData.fromPrimitiveArray(ok), 1});
      values.add(new Object[] {c[0], c[1]});
      Iterator<InternalRow> it = unsafeRows(CLASSIFICATION, 3, values::get);
      IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
          () -> ArrowRowStore.fromInternalRows(it, 3, 0, 2, root));
      assertEquals(c[2], e.getMessage());
      assertEquals(0, root.getAllocatedMemory(), "memory released after " + c[2]);
    }
    // A null element far into the array (third word of the null bitset), unsafe and generic.
    Object[] big = new Object[150];
    for (int i = 0; i < big.length; i++) {
      big[i] = i == 140 ? null : (float) i;
    }
    Iterator<InternalRow> it = unsafeRows(CLASSIFICATION, 1, r -> new Object[] {new GenericArrayData(big), 0});
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> ArrowRowStore.fromInternalRows(it, 150, 0, 4, root));
    assertEquals("row 0: features has a null element at index 140", e.getMessage());
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(150, 0, 4, root)) {
      e = assertThrows(IllegalArgumentException.class,
          () -> b.appendRow(new GenericInternalRow(new Object[] {new GenericArrayData(big), 0})));
      assertEquals("row 0: features has a null element at index 140", e.getMessage());
    }
  }

  @Test
  void narrowerElementTypeIsRejectedNotOverread() {
    // array<short> of dim elements holds half the bytes dim floats need: never read past it.
    StructType shorts = new StructType()
        .add("features", DataTypes.createArrayType(DataTypes.ShortType, false), false)
        .add("label", DataTypes.IntegerType, false);
    Iterator<InternalRow> it = unsafeRows(shorts, 1,
        r -> new Object[] {UnsafeArrayData.fromPrimitiveArray(new short[16]), 0});
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> ArrowRowStore.fromInternalRows(it, 16, 0, 4, root));
    assertTrue(e.getMessage().startsWith("row 0: features holds 48 bytes, too few for 16 floats"), e.getMessage());
  }

  @Test
  void gatherChecksBoundsAndCloseIsFinal() {
    ArrowRowStore store;
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(2, 0, 4, root)) {
      for (int r = 0; r < 5; r++) {
        b.append(new float[] {r, -r}, r);
      }
      store = b.build();
    }
    float[] f = new float[4];
    int[] l = new int[2];
    assertThrows(IndexOutOfBoundsException.class, () -> store.gather(new int[] {0, 5}, 0, 2, f, l, null));
    assertThrows(IndexOutOfBoundsException.class, () -> store.gather(new int[] {-1}, 0, 1, f, l, null));
    assertThrows(IndexOutOfBoundsException.class, () -> store.gather(new int[] {0}, 0, 2, f, l, null));
    assertThrows(IllegalArgumentException.class, () -> store.gather(new int[] {0, 1, 2}, 0, 3, f, l, null));
    store.gather(new int[] {4, 0}, 0, 2, f, l, null);
    assertEquals(4f, f[0]);
    assertEquals(-4f, f[1]);
    assertEquals(4, l[0]);
    assertEquals(0, l[1]);
    assertTrue(root.getAllocatedMemory() > 0);
    store.close();
    assertEquals(0, root.getAllocatedMemory());
    assertDoesNotThrow(store::close); // idempotent
    assertThrows(IllegalStateException.class, () -> store.gather(new int[] {0}, 0, 1, f, l, null));
    assertThrows(IllegalStateException.class, () -> store.batch(0));
  }

  @Test
  void emptyStore() {
    try (ArrowRowStore store = ArrowRowStore.fromInternalRows(unsafeRows(CLASSIFICATION, 0, r -> null), 5, 0, 8,
        root)) {
      assertEquals(0, store.rows());
      assertEquals(0, store.batchCount());
      store.gather(new int[0], 0, 0, new float[0], new int[0], null);
    }
  }

  @Test
  void badArgumentsSayWhatToDo() {
    assertThrows(IllegalArgumentException.class, () -> ArrowRowStore.builder(0, 0, 8, root));
    assertThrows(IllegalArgumentException.class, () -> ArrowRowStore.builder(4, -1, 8, root));
    assertThrows(IllegalArgumentException.class, () -> ArrowRowStore.builder(4, 0, 0, root));
    assertThrows(IllegalArgumentException.class, () -> ArrowRowStore.builder(4, 0, 8, null));
    assertThrows(IllegalArgumentException.class, () -> ArrowRowStore.builder(1 << 20, 0, 1 << 12, root));
  }

  @Test
  void expectedRowsSizesTheSlabs() {
    int dim = 784;
    int rows = 6000; // 18.8 MB of features in 12 batches: a 16 MiB slab of 10 batches, then one of 2
    long payload = (long) rows * dim * Float.BYTES;
    float[][] features = new float[rows][];
    int[] labels = new int[rows];
    long hinted;
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(dim, 0, 512, root).expectedRows(rows)) {
      for (int r = 0; r < rows; r++) {
        features[r] = randomBits(dim);
        labels[r] = r % 10;
        b.append(features[r], labels[r]);
      }
      IllegalStateException e = assertThrows(IllegalStateException.class, () -> b.expectedRows(10));
      assertTrue(e.getMessage().contains("before the first row"), e.getMessage());
      try (ArrowRowStore store = b.build()) {
        assertEquals(12, store.batchCount());
        // features, plus validity bitmaps (1/32 of them), labels, and Arrow's rounding of the last slab
        hinted = store.allocatedBytes();
        assertTrue(hinted >= payload && hinted <= payload * 1.2, "held " + hinted + " for payload " + payload);
        checkGather(store, features, labels, null);
      }
    }
    // Without the hint the store holds the same rows in growing slabs, the last one partly empty.
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(dim, 0, 512, root)) {
      for (int r = 0; r < rows; r++) {
        b.append(features[r], labels[r]);
      }
      try (ArrowRowStore store = b.build()) {
        long held = store.allocatedBytes();
        assertTrue(held > hinted && held <= payload * 2, "held " + held + ", with the hint " + hinted);
        checkGather(store, features, labels, null);
      }
    }
  }

  @Test
  void manySlabsWithoutHint() {
    int dim = 3;
    int rows = 5000; // batches of 4 rows: slabs of 1, 2, 4, ... batches
    float[][] features = new float[rows][];
    int[] labels = new int[rows];
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(dim, 0, 4, root)) {
      for (int r = 0; r < rows; r++) {
        features[r] = randomBits(dim);
        labels[r] = rng.nextInt();
        b.append(features[r], labels[r]);
      }
      try (ArrowRowStore store = b.build()) {
        assertEquals(1250, store.batchCount());
        checkGather(store, features, labels, null);
        checkArrowVectors(store, features, labels, null);
      }
    }
  }

  @Test
  void feedsTheBatchLoader() {
    int dim = 6;
    int rows = 40;
    float[][] features = new float[rows][];
    int[] labels = new int[rows];
    try (ArrowRowStore.Builder b = ArrowRowStore.builder(dim, 0, 16, root)) {
      for (int r = 0; r < rows; r++) {
        features[r] = randomBits(dim);
        labels[r] = r;
        b.append(features[r], labels[r]);
      }
      try (ArrowRowStore store = b.build()) {
        int[] order = shuffled(rows);
        try (BatchLoader loader = new BatchLoader(store, order, 8, 5, 2)) {
          for (int t = 0; t < 5; t++) {
            HostBatch hb = loader.next();
            for (int k = 0; k < 8; k++) {
              int r = order[t * 8 + k];
              assertBitwise(features[r], 0, hb.features, k * dim, dim, "step " + t + " row " + r);
              assertEquals(r, hb.labels[k]);
            }
          }
          assertEquals(null, loader.next());
        }
      }
    }
  }

  private int[] shuffled(int n) {
    int[] a = new int[n];
    for (int i = 0; i < n; i++) {
      a[i] = i;
    }
    for (int i = n - 1; i > 0; i--) {
      int j = rng.nextInt(i + 1);
      int t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return a;
  }
}
