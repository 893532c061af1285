package dev.sparktrainer.data;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.zip.GZIPInputStream;

/**
 * Reads Fashion-MNIST from IDX files (gzipped or not), as shipped by the Debian package
 * {@code dataset-fashion-mnist} in /usr/share/datasets/fashion-mnist. Pixels are scaled to [0, 1] and then
 * standardised with the training set's mean and standard deviation ((x - MEAN) / STD), as is usual.
 */
public final class FashionMnist {
  /** Where the Debian package puts the files. */
  public static final Path DEFAULT_DIR = Path.of("/usr/share/datasets/fashion-mnist");
  public static final int PIXELS = 28 * 28;
  public static final int CLASSES = 10;
  /** Mean and standard deviation of the training pixels (after scaling to [0, 1]). */
  public static final float MEAN = 0.2860f;
  public static final float STD = 0.3530f;

  private FashionMnist() {}

  /** The training split (60,000 rows). */
  public static HeapRowStore train(Path dir) throws IOException {
    return load(dir, "train");
  }

  /** The test split (10,000 rows). */
  public static HeapRowStore test(Path dir) throws IOException {
    return load(dir, "t10k");
  }

  /** Loads {prefix}-images-idx3-ubyte(.gz) and {prefix}-labels-idx1-ubyte(.gz). */
  public static HeapRowStore load(Path dir, String prefix) throws IOException {
    Path images = find(dir, prefix + "-images-idx3-ubyte");
    Path labels = find(dir, prefix + "-labels-idx1-ubyte");
    float[] x = readImages(images);
    int[] y = readLabels(labels);
    sameCount(images, x.length / PIXELS, labels, y.length);
    return new HeapRowStore(x, y, PIXELS);
  }

  private static Path find(Path dir, String base) throws IOException {
    for (String name : new String[] {base + ".gz", base}) {
      Path p = dir.resolve(name);
      if (Files.isRegularFile(p)) {
        return p;
      }
    }
    throw new IOException("Fashion-MNIST file " + base + "(.gz) not found in " + dir
        + "; install it with `apt-get install dataset-fashion-mnist` or pass the folder that holds it");
  }

  private static DataInputStream open(Path p) throws IOException {
    InputStream in = Files.newInputStream(p);
    if (p.toString().endsWith(".gz")) {
      in = new GZIPInputStream(in, 1 << 16);
    }
    return new DataInputStream(new java.io.BufferedInputStream(in, 1 << 16));
  }

  static float[] readImages(Path p) throws IOException {
    try (DataInputStream in = open(p)) {
      int n = imageHeader(in, p);
      byte[] raw = new byte[n * PIXELS];
      in.readFully(raw);
      float[] out = new float[raw.length];
      normalise(raw, out);
      return out;
    }
  }

  /** Reads an IDX image file's header: the number of 28x28 images that follow. */
  private static int imageHeader(DataInputStream in, Path p) throws IOException {
    int magic = in.readInt();
    if (magic != 0x803) {
      throw new IOException(p + ": not an IDX image file (magic " + Integer.toHexString(magic) + ")");
    }
    int n = in.readInt();
    int rows = in.readInt();
    int cols = in.readInt();
    if (n < 0 || rows != 28 || cols != 28) {
      throw new IOException(p + ": expected 28x28 images, got " + n + " of " + rows + "x" + cols);
    }
    return n;
  }

  /** Reads an IDX label file's header: the number of labels that follow. */
  private static int labelHeader(DataInputStream in, Path p) throws IOException {
    int magic = in.readInt();
    if (magic != 0x801) {
      throw new IOException(p + ": not an IDX label file (magic " + Integer.toHexString(magic) + ")");
    }
    int n = in.readInt();
    if (n < 0) {
      throw new IOException(p + ": negative label count");
    }
    return n;
  }

  /** out[i] = the standardised pixel raw[i]. */
  private static void normalise(byte[] raw, float[] out) {
    for (int i = 0; i < raw.length; i++) {
      out[i] = ((raw[i] & 0xff) / 255f - MEAN) / STD;
    }
  }

  private static int label(int raw, Path p, long index) throws IOException {
    if (raw >= CLASSES) {
      throw new IOException(p + ": label " + raw + " at " + index + " is not a Fashion-MNIST class");
    }
    return raw;
  }

  static int[] readLabels(Path p) throws IOException {
    try (DataInputStream in = open(p)) {
      int n = labelHeader(in, p);
      byte[] raw = new byte[n];
      in.readFully(raw);
      int[] out = new int[n];
      for (int i = 0; i < n; i++) {
        out[i] = label(raw[i] & 0xff, p, i);
      }
      return out;
    }
  }

  /** The number of rows of a split, from the two files' headers (nothing else is read). */
  public static int rows(Path dir, String prefix) throws IOException {
    Path images = find(dir, prefix + "-images-idx3-ubyte");
    Path labels = find(dir, prefix + "-labels-idx1-ubyte");
    int n;
    int m;
    try (DataInputStream in = open(images)) {
      n = imageHeader(in, images);
    }
    try (DataInputStream in = open(labels)) {
      m = labelHeader(in, labels);
    }
    sameCount(images, n, labels, m);
    return n;
  }

  private static void sameCount(Path images, int n, Path labels, int m) throws IOException {
    if (n != m) {
      throw new IOException(images + " has " + n + " images but " + labels + " has " + m + " labels");
    }
  }

  /** Receives rows of {@link #readRows}: a fresh array of {@link #PIXELS} standardised pixels, and the label. */
  @FunctionalInterface
  public interface RowSink {
    void accept(float[] pixels, int label) throws IOException;
  }

  /**
   * Streams rows [start, end) of a split to {@code sink}, one at a time, with the same values as {@link #load}:
   * nothing of the size of the split is allocated (a Spark partition reads its slice this way; a whole-split
   * array per task, 188 MB, once failed a job with "Java heap space" when the allocation met a GC held off by a
   * thread inflating a gzip file: GCLocker, JDK 17).
   */
  public static void readRows(Path dir, String prefix, int start, int end, RowSink sink) throws IOException {
    Path images = find(dir, prefix + "-images-idx3-ubyte");
    Path labels = find(dir, prefix + "-labels-idx1-ubyte");
    try (DataInputStream img = open(images); DataInputStream lab = open(labels)) {
      int n = imageHeader(img, images);
      sameCount(images, n, labels, labelHeader(lab, labels));
      if (start < 0 || start > end || end > n) {
        throw new IndexOutOfBoundsException("rows [" + start + ", " + end + ") of a split of " + n);
      }
      img.skipNBytes((long) start * PIXELS);
      lab.skipNBytes(start);
      byte[] raw = new byte[PIXELS];
      for (int r = start; r < end; r++) {
        img.readFully(raw);
        float[] px = new float[PIXELS];
        normalise(raw, px);
        sink.accept(px, label(lab.readUnsignedByte(), labels, r));
      }
    }
  }
}
