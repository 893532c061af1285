package dev.sparktrainer.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.data.SamplerPlan;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Random;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.expressions.UnsafeArrayData;
import org.apache.spark.sql.catalyst.expressions.UnsafeProjection;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.junit.jupiter.api.Test;
import scala.Tuple2;

/** Note [rows to ranks]: every rank gets exactly the rows the sampler plan gives it, at the right local positions. */
class RankChunksTest {
  static final int DIM = 5;

  /** Row i: features i*10 + j, label (classification) i % 7 or target (i, -i). */
  static List<InternalRow> rows(int n, int targetDim) {
    DataType second = targetDim == 0 ? DataTypes.DoubleType : DataTypes.createArrayType(DataTypes.FloatType);
    UnsafeProjection proj = UnsafeProjection.create(new DataType[] {
        DataTypes.createArrayType(DataTypes.FloatType), second});
    List<InternalRow> out = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      float[] f = new float[DIM];
      for (int j = 0; j < DIM; j++) {
        f[j] = i * 10 + j;
      }
      GenericInternalRow g = new GenericInternalRow(2);
      g.update(0, UnsafeArrayData.fromPrimitiveArray(f));
      if (targetDim == 0) {
        g.setDouble(1, i % 7);
      } else {
        g.update(1, UnsafeArrayData.fromPrimitiveArray(new float[] {i, -i}));
      }
      out.add(proj.apply(g).copy());
    }
    return out;
  }

  /** Encodes {@code parts} input partitions of the rows, as the map side does; returns each rank's chunks. */
  static List<List<byte[]>> exchange(List<InternalRow> rows, int parts, SamplerPlan plan, int targetDim) {
    List<List<byte[]>> byRank = new ArrayList<>();
    for (int r = 0; r < plan.world(); r++) {
      byRank.add(new ArrayList<>());
    }
    int per = (rows.size() + parts - 1) / parts;
    for (int p = 0; p < parts; p++) {
      int first = Math.min(rows.size(), p * per);
      int end = Math.min(rows.size(), first + per);
      Iterator<Tuple2<Integer, byte[]>> it = RankChunks.encode(p, rows.subList(first, end).iterator(), first, end,
          plan, DIM, targetDim);
      while (it.hasNext()) {
        Tuple2<Integer, byte[]> t = it.next();
        byRank.get(t._1()).add(t._2());
      }
    }
    return byRank;
  }

  record Decoded(int[] local, List<float[]> features, List<Integer> labels, List<float[]> targets) {}

  static Decoded decode(List<byte[]> chunks, int rank, SamplerPlan plan, int targetDim) {
    List<float[]> f = new ArrayList<>();
    List<Integer> l = new ArrayList<>();
    List<float[]> t = new ArrayList<>();
    int[] local = RankChunks.decode(chunks.iterator(), rank, Math.toIntExact(plan.rowsPerRank()), DIM, targetDim,
        (features, label, target) -> {
          f.add(features.clone());
          l.add(label);
          t.add(target == null ? null : target.clone());
        });
    return new Decoded(local, f, l, t);
  }

  @Test
  void everyRankGetsItsPlannedRowsInAnyChunkOrder() {
    for (boolean dropLast : new boolean[] {false, true}) {
      List<InternalRow> rows = rows(1000, 0);
      SamplerPlan plan = new SamplerPlan(rows.size(), 3, 16, 5, dropLast); // 1000 rows, W*B = 48: padded or cut
      List<List<byte[]>> byRank = exchange(rows, 4, plan, 0);
      for (int rank = 0; rank < 3; rank++) {
        List<byte[]> chunks = new ArrayList<>(byRank.get(rank));
        Collections.shuffle(chunks, new Random(rank)); // Spark delivers a rank's chunks in any order
        Decoded d = decode(chunks, rank, plan, 0);
        int[] expected = plan.rowsOfRank(rank); // global row at each local position
        assertEquals(expected.length, d.local().length);
        for (int lp = 0; lp < expected.length; lp++) {
          int row = expected[lp];
          float[] f = d.features().get(d.local()[lp]);
          assertEquals(row * 10f, f[0], "rank " + rank + " local position " + lp + " (dropLast " + dropLast + ")");
          assertEquals(row * 10f + DIM - 1, f[DIM - 1]);
          assertEquals(row % 7, d.labels().get(d.local()[lp]));
        }
      }
    }
  }

  @Test
  void regressionTargetsTravelWithTheirRows() {
    List<InternalRow> rows = rows(300, 2);
    SamplerPlan plan = new SamplerPlan(rows.size(), 2, 8, 11, false);
    List<List<byte[]>> byRank = exchange(rows, 3, plan, 2);
    for (int rank = 0; rank < 2; rank++) {
      Decoded d = decode(byRank.get(rank), rank, plan, 2);
      int[] expected = plan.rowsOfRank(rank);
      for (int lp = 0; lp < expected.length; lp++) {
        int row = expected[lp];
        assertArrayEquals(new float[] {row, -row}, d.targets().get(d.local()[lp]));
        assertEquals(row * 10f + 3, d.features().get(d.local()[lp])[3]);
      }
    }
  }

  @Test
  void validationRowsAreShardedByRowIndexInOrder() {
    List<InternalRow> rows = rows(11, 0);
    int world = 3;
    List<List<byte[]>> byKey = new ArrayList<>();
    for (int k = 0; k < 2 * world; k++) {
      byKey.add(new ArrayList<>());
    }
    for (int p = 0; p < 2; p++) { // partitions of 6 and 5 rows
      int first = p * 6;
      int end = Math.min(11, first + 6);
      Iterator<Tuple2<Integer, byte[]>> it = RankChunks.encodeValidation(p, rows.subList(first, end).iterator(),
          first, end, world, DIM, 0);
      while (it.hasNext()) {
        Tuple2<Integer, byte[]> t = it.next();
        byKey.get(t._1()).add(t._2());
      }
    }
    for (int rank = 0; rank < world; rank++) {
      assertTrue(byKey.get(rank).isEmpty(), "validation rows are keyed W + rank");
      int n = Math.toIntExact(RankChunks.validationRowsOf(11, world, rank));
      assertEquals(rank < 2 ? 4 : 3, n);
      List<float[]> f = new ArrayList<>();
      int[] local = RankChunks.decode(byKey.get(world + rank).iterator(), rank, n, DIM, 0,
          (features, label, target) -> f.add(features.clone()));
      for (int lp = 0; lp < n; lp++) {
        assertEquals((lp * world + rank) * 10f, f.get(local[lp])[0], "rank " + rank + " local position " + lp);
      }
    }
    assertEquals(0, RankChunks.validationRowsOf(2, world, 2), "fewer validation rows than ranks: rank 2 gets none");
  }

  @Test
  void chunksHoldWholeRowsOfAboutAMebibyte() {
    List<InternalRow> rows = rows(2000, 0);
    SamplerPlan plan = new SamplerPlan(rows.size(), 1, 10, 1, false);
    Iterator<Tuple2<Integer, byte[]>> it = RankChunks.encode(0, rows.iterator(), 0, rows.size(), plan, DIM, 0);
    int rowBytes = RankChunks.rowBytes(DIM, 0);
    assertEquals(4 + 4 + DIM * 4, rowBytes);
    long total = 0;
    int chunks = 0;
    while (it.hasNext()) {
      byte[] c = it.next()._2();
      assertEquals(0, c.length % rowBytes);
      assertTrue(c.length <= RankChunks.CHUNK_BYTES);
      total += c.length;
      chunks++;
    }
    assertEquals(2000L * rowBytes, total);
    assertEquals(1, chunks, "2000 rows of 28 bytes fit one chunk");
  }

  @Test
  void aChangedInputFailsWithAClearMessage() {
    List<InternalRow> rows = rows(100, 0);
    SamplerPlan plan = new SamplerPlan(rows.size(), 2, 10, 1, false);
    // The partition now has more rows than validation counted.
    IllegalStateException more = assertThrows(IllegalStateException.class, () -> drain(RankChunks.encode(0,
        rows.iterator(), 0, 60, plan, DIM, 0)));
    assertTrue(more.getMessage().contains("has more rows than validation counted"), more.getMessage());
    // ... or fewer.
    IllegalStateException fewer = assertThrows(IllegalStateException.class, () -> drain(RankChunks.encode(1,
        rows.subList(0, 30).iterator(), 60, 100, plan, DIM, 0)));
    assertTrue(fewer.getMessage().contains("input partition 1 has 30 rows, validation counted 40"),
        fewer.getMessage());
    // A rank that misses a chunk, or gets one twice, says so.
    List<byte[]> rank0 = exchange(rows, 1, plan, 0).get(0);
    IllegalStateException missing = assertThrows(IllegalStateException.class,
        () -> decode(rank0.subList(0, 0), 0, plan, 0));
    assertTrue(missing.getMessage().contains("rank 0 received 0 training rows, the plan gives it 50"),
        missing.getMessage());
    List<byte[]> twice = new ArrayList<>(rank0);
    twice.addAll(rank0);
    IllegalStateException dup = assertThrows(IllegalStateException.class, () -> decode(twice, 0, plan, 0));
    assertTrue(dup.getMessage().contains("twice"), dup.getMessage());
    IllegalStateException torn = assertThrows(IllegalStateException.class,
        () -> decode(List.of(Arrays.copyOf(rank0.get(0), 7)), 0, plan, 0));
    assertTrue(torn.getMessage().contains("not a multiple"), torn.getMessage());
  }

  private static void drain(Iterator<?> it) {
    while (it.hasNext()) {
      it.next();
    }
  }
}
