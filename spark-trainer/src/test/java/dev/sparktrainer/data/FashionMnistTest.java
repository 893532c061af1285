package dev.sparktrainer.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.zip.GZIPOutputStream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The IDX reader: whole splits (load) and streamed slices (readRows, what a Spark partition reads). */
class FashionMnistTest {
  /** Writes {prefix}-images-idx3-ubyte / -labels-idx1-ubyte (gzipped or not) of n random images. */
  static void write(Path dir, String prefix, int n, int labelCount, boolean gz, long seed) throws IOException {
    Random r = new Random(seed);
    String suffix = gz ? ".gz" : "";
    try (DataOutputStream out = stream(dir.resolve(prefix + "-images-idx3-ubyte" + suffix), gz)) {
      out.writeInt(0x803);
      out.writeInt(n);
      out.writeInt(28);
      out.writeInt(28);
      byte[] px = new byte[n * FashionMnist.PIXELS];
      r.nextBytes(px);
      out.write(px);
    }
    try (DataOutputStream out = stream(dir.resolve(prefix + "-labels-idx1-ubyte" + suffix), gz)) {
      out.writeInt(0x801);
      out.writeInt(labelCount);
      for (int i = 0; i < labelCount; i++) {
        out.writeByte(r.nextInt(FashionMnist.CLASSES));
      }
    }
  }

  private static DataOutputStream stream(Path p, boolean gz) throws IOException {
    OutputStream o = Files.newOutputStream(p);
    return new DataOutputStream(gz ? new GZIPOutputStream(o) : o);
  }

  record Slice(float[] features, int[] labels) {}

  static Slice read(Path dir, String prefix, int start, int end) throws IOException {
    List<float[]> rows = new ArrayList<>();
    List<Integer> labels = new ArrayList<>();
    FashionMnist.readRows(dir, prefix, start, end, (px, label) -> {
      assertEquals(FashionMnist.PIXELS, px.length);
      rows.add(px);
      labels.add(label);
    });
    float[] f = new float[rows.size() * FashionMnist.PIXELS];
    for (int i = 0; i < rows.size(); i++) {
      System.arraycopy(rows.get(i), 0, f, i * FashionMnist.PIXELS, FashionMnist.PIXELS);
    }
    return new Slice(f, labels.stream().mapToInt(Integer::intValue).toArray());
  }

  static void assertSliceOf(HeapRowStore all, Slice s, int start, int end) {
    assertArrayEquals(Arrays.copyOfRange(all.features(), start * FashionMnist.PIXELS, end * FashionMnist.PIXELS),
        s.features(), "pixels of rows [" + start + ", " + end + ")");
    assertArrayEquals(Arrays.copyOfRange(all.labels(), start, end), s.labels(), "labels");
  }

  @Test
  void slicesReadTheSameValuesAsTheWholeSplit(@TempDir Path dir) throws IOException {
    for (boolean gz : new boolean[] {true, false}) {
      Path d = Files.createDirectory(dir.resolve(gz ? "gz" : "plain"));
      write(d, "train", 50, 50, gz, 7);
      assertEquals(50, FashionMnist.rows(d, "train"));
      HeapRowStore all = FashionMnist.load(d, "train");
      for (int[] range : new int[][] {{0, 50}, {0, 1}, {10, 23}, {49, 50}, {25, 25}}) {
        assertSliceOf(all, read(d, "train", range[0], range[1]), range[0], range[1]);
      }
      assertThrows(IndexOutOfBoundsException.class, () -> read(d, "train", 40, 51));
      assertThrows(IndexOutOfBoundsException.class, () -> read(d, "train", 5, 4));
    }
  }

  @Test
  void mismatchedFilesAreRefused(@TempDir Path dir) throws IOException {
    write(dir, "t10k", 5, 6, true, 3);
    IOException e = assertThrows(IOException.class, () -> FashionMnist.rows(dir, "t10k"));
    assertTrue(e.getMessage().contains("has 5 images but") && e.getMessage().contains("has 6 labels"),
        e.getMessage());
    assertThrows(IOException.class, () -> read(dir, "t10k", 0, 1));
  }

  @Test
  void theInstalledDatasetStreamsAsItLoads() throws IOException {
    Path dir = FashionMnist.DEFAULT_DIR;
    org.junit.jupiter.api.Assumptions.assumeTrue(Files.isDirectory(dir), "dataset-fashion-mnist not installed");
    assertEquals(10_000, FashionMnist.rows(dir, "t10k"));
    HeapRowStore test = FashionMnist.test(dir);
    assertSliceOf(test, read(dir, "t10k", 9_990, 10_000), 9_990, 10_000);
    assertSliceOf(test, read(dir, "t10k", 0, 5), 0, 5);
  }
}
