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
    if (x.length / PIXELS != y.length) {
      throw new IOException(images + " has " + x.length / PIXELS + " images but " + labels + " has " + y.length
          + " labels");
    }
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
      byte[] raw = new byte[n * PIXELS];
      in.readFully(raw);
      float[] out = new float[raw.length];
      for (int i = 0; i < raw.length; i++) {
        out[i] = ((raw[i] & 0xff) / 255f - MEAN) / STD;
      }
      return out;
    }
  }

  static int[] readLabels(Path p) throws IOException {
    try (DataInputStream in = open(p)) {
      int magic = in.readInt();
      if (magic != 0x801) {
        throw new IOException(p + ": not an IDX label file (magic " + Integer.toHexString(magic) + ")");
      }
      int n = in.readInt();
      if (n < 0) {
        throw new IOException(p + ": negative label count");
      }
      byte[] raw = new byte[n];
      in.readFully(raw);
      int[] out = new int[n];
      for (int i = 0; i < n; i++) {
        out[i] = raw[i] & 0xff;
        if (out[i] >= CLASSES) {
          throw new IOException(p + ": label " + out[i] + " at " + i + " is not a Fashion-MNIST class");
        }
      }
      return out;
    }
  }
}
