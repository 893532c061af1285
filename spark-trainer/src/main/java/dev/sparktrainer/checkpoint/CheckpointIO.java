package dev.sparktrainer.checkpoint;

import java.io.EOFException;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Optional;
import java.util.UUID;
import java.util.function.BiConsumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.ChecksumException;
import org.apache.hadoop.fs.ChecksumFileSystem;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.StreamCapabilities;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Reads and writes checkpoint files on any Hadoop file system (file://, hdfs://, s3a://...), and manages a
 * directory of them named {@code ckpt-<step>.stckpt}.
 *
 * <p>Writes are atomic where the file system's rename is (HDFS, local): the bytes go to a hidden temporary
 * file in the same directory, which is then renamed, so a reader never sees a half-written checkpoint under
 * the final name. Reads validate the whole file before allocating tensor memory (see package-info) and turn
 * every problem with the file's content into a {@link CheckpointException}; other {@link IOException}s mean
 * the file system itself failed.
 */
public final class CheckpointIO {
  private static final Logger LOG = LoggerFactory.getLogger(CheckpointIO.class);

  /** File name extension of checkpoints. */
  public static final String EXTENSION = ".stckpt";
  private static final Pattern NAME = Pattern.compile("ckpt-(\\d{1,19})\\.stckpt");

  private CheckpointIO() {}

  /**
   * The file system of {@code p}; for checksummed local file systems (file://) the raw one underneath.
   *
   * <p>Note [own checksums]: the format carries CRCs of its header and data, so the local file system's
   * {@code .crc} side files add nothing, and its reaction to a checksum failure (moving the file into a
   * {@code bad_files} directory at the root of the disk) would make a corrupt checkpoint vanish from the
   * directory instead of being reported and skipped.
   */
  private static FileSystem fileSystem(Path p, Configuration conf) throws IOException {
    FileSystem fs = p.getFileSystem(conf);
    return fs instanceof ChecksumFileSystem cfs ? cfs.getRawFileSystem() : fs;
  }

  // ---- single files ----

  /**
   * Writes {@code data} to {@code path} atomically: to a temporary name in the same directory, then a
   * rename. Parent directories are created. An existing file at {@code path} is replaced (deleted just
   * before the rename; on HDFS that leaves a short window without it, which only matters when one step is
   * written twice). On failure the temporary file is removed.
   */
  public static void write(CheckpointData data, String path, Configuration conf) throws IOException {
    Path dst = new Path(path);
    FileSystem fs = fileSystem(dst, conf);
    Path dir = dst.getParent();
    if (dir == null) {
      throw new IllegalArgumentException("checkpoint path " + path + " names no file");
    }
    if (!fs.mkdirs(dir)) {
      throw new IOException("cannot create the checkpoint directory " + dir);
    }
    // Hidden (leading dot) and not named ckpt-*.stckpt: the directory helpers, Spark and Hadoop skip it.
    Path tmp = new Path(dir, "." + dst.getName() + "." + UUID.randomUUID() + ".tmp");
    try {
      try (FSDataOutputStream out = fs.create(tmp, false)) {
        CheckpointFormat.write(data, out);
        if (out.hasCapability(StreamCapabilities.HSYNC)) {
          out.hsync();
        }
      }
      if (fs.exists(dst) && !fs.delete(dst, false)) {
        throw new IOException("cannot replace the existing checkpoint " + dst);
      }
      if (!fs.rename(tmp, dst)) {
        throw new IOException("cannot rename " + tmp + " to " + dst);
      }
    } catch (IOException | RuntimeException | Error e) {
      try {
        fs.delete(tmp, false);
      } catch (IOException | RuntimeException cleanup) {
        e.addSuppressed(cleanup);
      }
      throw e;
    }
  }

  /**
   * Reads and validates a checkpoint file.
   *
   * @throws CheckpointException when the file is corrupt, truncated or not a checkpoint; the message says
   *     what is wrong
   * @throws FileNotFoundException when there is no such file
   * @throws IOException when the file system fails
   */
  public static CheckpointData read(String path, Configuration conf) throws IOException {
    Path p = new Path(path);
    FileSystem fs = fileSystem(p, conf);
    return CheckpointFormat.toData(readFile(p, fs, fs.getFileStatus(p), true));
  }

  /**
   * Checks a checkpoint file completely (magic, header, layout, both CRCs) while streaming it, without
   * allocating tensor memory; also checks that a {@code ckpt-<step>.stckpt} name agrees with the stored
   * step.
   *
   * @throws CheckpointException when the file is not a valid checkpoint
   */
  public static CheckpointInfo verify(String path, Configuration conf) throws IOException {
    Path p = new Path(path);
    FileSystem fs = fileSystem(p, conf);
    FileStatus st = fs.getFileStatus(p);
    CheckpointFormat.Header h = readFile(p, fs, st, false).header();
    long named = stepOf(p.getName());
    if (named >= 0 && named != h.step()) {
      throw new CheckpointException("checkpoint " + p + " is named for step " + named + " but holds step "
          + h.step() + " (renamed by hand?)");
    }
    return new CheckpointInfo(p.toString(), h.step(), h.epoch(), st.getLen());
  }

  private static CheckpointFormat.Decoded readFile(Path p, FileSystem fs, FileStatus st, boolean keepData)
      throws IOException {
    if (st.isDirectory()) {
      throw new CheckpointException("checkpoint " + p + " is a directory, not a checkpoint file");
    }
    try (FSDataInputStream in = fs.open(p)) {
      return CheckpointFormat.read(in, st.getLen(), p.toString(), keepData);
    } catch (ChecksumException e) {
      // The file system's own checksum (e.g. the .crc file of file://, or HDFS block checksums).
      throw CheckpointFormat.corrupt(p.toString(), "the file system's checksum does not match ("
          + e.getMessage() + ")", e);
    } catch (EOFException e) {
      throw CheckpointFormat.corrupt(p.toString(), "the file ended early (" + e.getMessage() + ")", e);
    }
  }

  /**
   * Writes {@code data} in the checkpoint format to a stream (not closed, not flushed). For files use
   * {@link #write}, which is atomic.
   */
  public static void writeTo(CheckpointData data, OutputStream out) throws IOException {
    CheckpointFormat.write(data, out);
  }

  /**
   * Reads and validates a checkpoint of exactly {@code fileLength} bytes from a stream (not closed). The
   * stream must end after those bytes. Allocations are bounded by {@code fileLength}, so it must be the
   * true length.
   *
   * @throws CheckpointException when the bytes are not a valid checkpoint
   */
  public static CheckpointData readFrom(InputStream in, long fileLength) throws IOException {
    String source = "<stream>";
    try {
      return CheckpointFormat.toData(CheckpointFormat.read(in, fileLength, source, true));
    } catch (EOFException e) {
      throw CheckpointFormat.corrupt(source, "the stream ended early (" + e.getMessage() + ")", e);
    }
  }

  // ---- a directory of checkpoints ----

  /** The file name for a step: {@code ckpt-<step>.stckpt}. */
  public static String fileName(long step) {
    if (step < 0) {
      throw new IllegalArgumentException("step must be >= 0, got " + step);
    }
    return "ckpt-" + step + EXTENSION;
  }

  /** {@code dir/ckpt-<step>.stckpt}. */
  public static String pathFor(String dir, long step) {
    return new Path(new Path(dir), fileName(step)).toString();
  }

  /** The step in a checkpoint file name, or -1 when the name is not {@code ckpt-<step>.stckpt}. */
  public static long stepOf(String fileName) {
    Matcher m = NAME.matcher(fileName);
    if (!m.matches()) {
      return -1;
    }
    try {
      return Long.parseLong(m.group(1));
    } catch (NumberFormatException e) {
      return -1; // more than Long.MAX_VALUE
    }
  }

  /** A checkpoint-named file of a directory. */
  private record Named(Path path, long step) {}

  /** Files named like checkpoints, by step ascending (not opened). A missing directory has none. */
  private static List<Named> named(Path dir, FileSystem fs) throws IOException {
    List<Named> out = new ArrayList<>();
    FileStatus[] all;
    try {
      all = fs.listStatus(dir);
    } catch (FileNotFoundException e) {
      return out;
    }
    for (FileStatus st : all) {
      long step = stepOf(st.getPath().getName());
      if (step >= 0 && st.isFile()) {
        out.add(new Named(st.getPath(), step));
      }
    }
    out.sort(Comparator.comparingLong(Named::step));
    return out;
  }

  /**
   * The checkpoints in {@code dir} that pass {@link #verify}, by step ascending. Invalid ones are left out
   * (and logged); reading every file completely, this costs one pass over the directory's bytes.
   */
  public static List<CheckpointInfo> listValid(String dir, Configuration conf) throws IOException {
    Path d = new Path(dir);
    FileSystem fs = fileSystem(d, conf);
    List<CheckpointInfo> out = new ArrayList<>();
    for (Named n : named(d, fs)) {
      try {
        out.add(verify(n.path().toString(), conf));
      } catch (CheckpointException e) {
        LOG.warn("skipping invalid checkpoint: {}", e.getMessage());
      } catch (FileNotFoundException e) {
        LOG.info("checkpoint {} disappeared while listing (deleted by keepLast?)", n.path());
      }
    }
    return out;
  }

  /**
   * The newest checkpoint of {@code dir} that reads cleanly, or empty when there is none (or no such
   * directory). Corrupt ones are skipped and logged. File system errors other than corrupt content are
   * thrown, so a flaky store never silently sends a job back to an older checkpoint.
   */
  public static Optional<CheckpointData> latest(String dir, Configuration conf) throws IOException {
    return latest(dir, conf, (path, e) -> LOG.warn("skipping corrupt checkpoint: {}", e.getMessage()));
  }

  /** As {@link #latest(String, Configuration)}, reporting each skipped file to {@code onSkip}. */
  public static Optional<CheckpointData> latest(String dir, Configuration conf,
      BiConsumer<String, CheckpointException> onSkip) throws IOException {
    Path d = new Path(dir);
    FileSystem fs = fileSystem(d, conf);
    List<Named> all = named(d, fs);
    for (int k = all.size() - 1; k >= 0; k--) {
      Named n = all.get(k);
      try {
        CheckpointData data = read(n.path().toString(), conf);
        if (data.step() != n.step()) {
          throw new CheckpointException("checkpoint " + n.path() + " is named for step " + n.step()
              + " but holds step " + data.step() + " (renamed by hand?)");
        }
        return Optional.of(data);
      } catch (CheckpointException e) {
        onSkip.accept(n.path().toString(), e);
      } catch (FileNotFoundException e) {
        LOG.info("checkpoint {} disappeared while reading (deleted by keepLast?)", n.path());
      }
    }
    return Optional.empty();
  }

  /**
   * Deletes all but the {@code keep} highest-step checkpoint files of {@code dir} (by name; files are not
   * opened, so call it right after a successful {@link #write}). Other files, including temporary ones of
   * writes in progress, are left alone.
   *
   * @return the deleted paths
   */
  public static List<String> keepLast(String dir, int keep, Configuration conf) throws IOException {
    if (keep < 1) {
      throw new IllegalArgumentException("keepLast needs keep >= 1, got " + keep);
    }
    Path d = new Path(dir);
    FileSystem fs = fileSystem(d, conf);
    List<Named> all = named(d, fs);
    List<String> deleted = new ArrayList<>();
    for (int k = 0; k < all.size() - keep; k++) {
      Path p = all.get(k).path();
      if (fs.delete(p, false)) {
        deleted.add(p.toString());
      }
    }
    return deleted;
  }
}
