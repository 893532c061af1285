package dev.sparktrainer.checkpoint;

import static dev.sparktrainer.checkpoint.CheckpointFixtures.assemble;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.assembleRaw;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.assembleSealed;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.data;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.decode;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.encode;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.header;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.headerBody;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.headerLength;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.withHeaderLength;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.ByteArrayInputStream;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.TreeSet;
import java.util.function.Consumer;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Each kind of damage is rejected with a CheckpointException whose message names the problem. */
class CheckpointCorruptionTest {
  private static CheckpointData sample;
  private static byte[] good;

  @BeforeAll
  static void makeSample() {
    sample = CheckpointFixtures.sample();
    good = encode(sample);
  }

  /** Asserts that {@code file} is rejected and that the message contains each of {@code parts}. */
  private static CheckpointException rejected(byte[] file, String... parts) {
    CheckpointException e = assertThrows(CheckpointException.class, () -> decode(file));
    String m = e.getMessage();
    assertTrue(m.startsWith("checkpoint <stream> is corrupt or truncated: "), m);
    for (String p : parts) {
      assertTrue(m.contains(p), "message should contain '" + p + "': " + m);
    }
    return e;
  }

  /** The sample with its header edited (and correctly re-sealed), data unchanged. */
  private static byte[] edited(Consumer<ObjectNode> edit) {
    ObjectNode h = header(good);
    edit.accept(h);
    return assemble(h, data(good));
  }

  private static ObjectNode tensor(ObjectNode h, int k) {
    return (ObjectNode) h.get("tensors").get(k);
  }

  @Test
  void theSampleItselfIsValid() throws IOException {
    assertEquals(sample, decode(good));
    assertEquals(sample, decode(edited(h -> { })));
  }

  @Test
  void wrongMagic() {
    byte[] f = good.clone();
    f[0] = 'X';
    f[1] = 0;
    rejected(f, "starts with \"X\\x00CKPT01\"", "not the magic \"STCKPT01\"");
    rejected("PK\u0003\u0004 this is a zip file, not a checkpoint".getBytes(StandardCharsets.ISO_8859_1),
        "not the magic");
  }

  @Test
  void everyTruncationIsRejected() {
    long h = headerLength(good);
    TreeSet<Integer> lengths = new TreeSet<>();
    for (int n = 0; n < 64; n++) {
      lengths.add(n);
    }
    for (int n = 0; n < good.length; n += 37) {
      lengths.add(n);
    }
    for (int d = -3; d <= 3; d++) {
      lengths.add((int) (16 + h + d));
    }
    lengths.add(good.length - 1);
    for (int n : lengths) {
      byte[] f = Arrays.copyOf(good, n);
      if (n < 16) {
        rejected(f, "fewer than the 16-byte preamble");
      } else if (n < 16 + h) {
        rejected(f, "header length " + h + " runs past the end of the file (" + n + " bytes)");
      } else {
        rejected(f, "the header says the data section has " + (good.length - 16 - h) + " bytes, the file has "
            + (n - 16 - h));
      }
    }
  }

  @Test
  void aStreamShorterThanItsDeclaredLengthIsRejected() {
    for (int n : new int[] {5, 20, (int) headerLength(good) + 20, good.length - 1}) {
      byte[] f = Arrays.copyOf(good, n);
      CheckpointException e = assertThrows(CheckpointException.class,
          () -> CheckpointIO.readFrom(new ByteArrayInputStream(f), good.length));
      assertTrue(e.getMessage().contains("the file ends inside"), e.getMessage());
    }
    CheckpointException e = assertThrows(CheckpointException.class,
        () -> CheckpointIO.readFrom(new ByteArrayInputStream(Arrays.copyOf(good, good.length + 3)), good.length));
    assertTrue(e.getMessage().contains("bytes after the"), e.getMessage());
  }

  @Test
  void truncatedFileOnAFileSystem(@TempDir Path tmp) throws IOException {
    Path p = tmp.resolve("ckpt-17.stckpt");
    Files.write(p, Arrays.copyOf(good, good.length - 100));
    CheckpointException e = assertThrows(CheckpointException.class,
        () -> CheckpointIO.read("file://" + p.toAbsolutePath(), new Configuration()));
    assertTrue(e.getMessage().contains("ckpt-17.stckpt is corrupt or truncated"), e.getMessage());
    assertTrue(e.getMessage().contains("data section has"), e.getMessage());
  }

  @Test
  void damageBehindTheFileSystemsBackIsRejected(@TempDir Path tmp) throws IOException {
    Configuration conf = new Configuration();
    String path = "file://" + tmp.toAbsolutePath() + "/ckpt-17.stckpt";
    CheckpointIO.write(sample, path, conf);
    try (RandomAccessFile raf = new RandomAccessFile(tmp.resolve("ckpt-17.stckpt").toFile(), "rw")) {
      raf.seek(raf.length() - 10);
      int b = raf.read();
      raf.seek(raf.length() - 10);
      raf.write(b ^ 0x40);
    }
    CheckpointException e = assertThrows(CheckpointException.class, () -> CheckpointIO.read(path, conf));
    assertTrue(e.getMessage().contains("ckpt-17.stckpt is corrupt or truncated: data checksum mismatch"),
        e.getMessage());
    assertTrue(Files.exists(tmp.resolve("ckpt-17.stckpt")), "the corrupt file stays where it is");
    try (var files = Files.list(tmp)) {
      assertEquals(java.util.List.of("ckpt-17.stckpt"), files.map(f -> f.getFileName().toString()).toList(),
          "no .crc side files or temporaries");
    }
  }

  @Test
  void missingFileAndDirectoryAreNotCorruption(@TempDir Path tmp) {
    Configuration conf = new Configuration();
    assertThrows(FileNotFoundException.class,
        () -> CheckpointIO.read("file://" + tmp.toAbsolutePath() + "/nope.stckpt", conf));
    CheckpointException e = assertThrows(CheckpointException.class,
        () -> CheckpointIO.read("file://" + tmp.toAbsolutePath(), conf));
    assertTrue(e.getMessage().contains("is a directory"), e.getMessage());
  }

  @Test
  void oversizedOrImpossibleHeaderLength() {
    rejected(withHeaderLength(good, (64L << 20) + 1), "header length 67108865 is outside [28, 67108864]");
    rejected(withHeaderLength(good, 1L << 40), "is outside");
    rejected(withHeaderLength(good, -1), "header length -1 is outside");
    rejected(withHeaderLength(good, Long.MIN_VALUE), "is outside");
    rejected(withHeaderLength(good, 0), "is outside");
    rejected(withHeaderLength(good, good.length), "runs past the end of the file");
    rejected(withHeaderLength(good, headerLength(good) - 1), "does not end with its ,\"headerCrc32\"");
    rejected(withHeaderLength(good, headerLength(good) + 1), "does not end with its ,\"headerCrc32\"");
  }

  @Test
  void headerChecksumMismatch() {
    byte[] f = good.clone();
    f[30] ^= 0x01; // inside the JSON
    rejected(f, "header checksum mismatch");
  }

  @Test
  void dataChecksumMismatch() {
    byte[] f = good.clone();
    f[f.length - 5] ^= 0x10;
    rejected(f, "data checksum mismatch");
    rejected(edited(h -> h.put("dataCrc32", (h.get("dataCrc32").longValue() + 1) & 0xffffffffL)),
        "data checksum mismatch");
  }

  @Test
  void malformedJson() {
    byte[] body = headerBody(good);
    rejected(assembleSealed(Arrays.copyOf(body, body.length / 2), data(good)), "the header is not valid JSON");
    rejected(assembleSealed("{\"formatVersion\":1,\"step\":".getBytes(StandardCharsets.UTF_8), data(good)),
        "not valid JSON");
    rejected(assembleSealed("{\"formatVersion\":1,\"formatVersion\":1".getBytes(StandardCharsets.UTF_8), data(good)),
        "not valid JSON", "Duplicate field 'formatVersion'");
    byte[] latin1 = "{\"formatVersion\":1,\"x\":\"\u00e9\"".getBytes(StandardCharsets.ISO_8859_1);
    rejected(assembleSealed(latin1, data(good)), "not valid");
    rejected(assembleSealed("[{\"a\":1".getBytes(StandardCharsets.UTF_8), data(good)), "not valid JSON");
    StringBuilder deep = new StringBuilder("{\"formatVersion\":1,\"x\":");
    deep.append("[".repeat(1000)).append("]".repeat(1000));
    rejected(assembleSealed(deep.toString().getBytes(StandardCharsets.UTF_8), data(good)), "not valid JSON",
        "nesting depth");
  }

  @Test
  void twoJsonDocumentsAreRejected() {
    byte[] first = "{\"formatVersion\":1} {\"step\":1".getBytes(StandardCharsets.UTF_8);
    rejected(assembleSealed(first, data(good)), "not valid JSON");
  }

  @Test
  void missingFields() {
    for (String f : new String[] {"formatVersion", "step", "epoch", "modelSpec", "optimizer", "extra", "dataBytes",
        "dataCrc32", "tensors"}) {
      rejected(edited(h -> h.remove(f)), "the header has no '" + f + "' member");
    }
    rejected(edited(h -> ((ObjectNode) h.get("optimizer")).remove("steps")), "no 'optimizer.steps' member");
    for (String f : new String[] {"name", "dtype", "shape", "offset", "nbytes"}) {
      rejected(edited(h -> tensor(h, 1).remove(f)), "tensors[1]");
    }
    rejected(edited(h -> tensor(h, 1).remove("nbytes")), "the header has no 'tensors[1] ('param/0.linear.bias').nbytes'");
  }

  @Test
  void wrongTypes() {
    rejected(edited(h -> h.put("step", "17")), "'step' must be an integer in [0, 9223372036854775807], got \"17\"");
    rejected(edited(h -> h.put("step", 17.0)), "'step' must be an integer");
    rejected(edited(h -> h.put("step", -1)), "'step' must be an integer");
    rejected(edited(h -> h.put("epoch", 1L << 40)), "'epoch' must be an integer in [0, 2147483647]");
    rejected(edited(h -> h.put("step", new java.math.BigInteger("99999999999999999999999"))), "'step' must be");
    rejected(edited(h -> h.putArray("modelSpec")), "'modelSpec' must be a JSON object, got array");
    rejected(edited(h -> h.put("extra", "none")), "'extra' must be a JSON object");
    rejected(edited(h -> h.putObject("tensors")), "'tensors' must be an array");
    rejected(edited(h -> ((ArrayNode) h.get("tensors")).set(0, h.textNode("x"))), "tensors[0] must be an object");
    rejected(edited(h -> tensor(h, 0).put("name", 5)), "tensors[0].name must be a non-empty string");
    rejected(edited(h -> tensor(h, 0).put("name", "")), "tensors[0].name must be a non-empty string");
    rejected(edited(h -> tensor(h, 0).put("dtype", 1)), ".dtype must be a string");
    rejected(edited(h -> tensor(h, 0).put("shape", "(7, 5)")), ".shape must be an array");
    rejected(edited(h -> tensor(h, 0).put("dataCrc32", -1)), "unknown member 'dataCrc32'");
    rejected(edited(h -> h.put("dataCrc32", 1L << 32)), "'dataCrc32' must be an integer in [0, 4294967295]");
  }

  @Test
  void unknownDtypeAndVersionAndMember() {
    rejected(edited(h -> tensor(h, 0).put("dtype", "float64")), "unknown dtype 'float64'");
    rejected(edited(h -> tensor(h, 0).put("dtype", "FLOAT32")), "unknown dtype 'FLOAT32'");
    rejected(edited(h -> h.put("formatVersion", 2)), "formatVersion is 2, this reader knows only 1");
    rejected(edited(h -> h.put("javaClass", "java.util.HashMap")), "unknown member 'javaClass'");
  }

  @Test
  void badShapes() {
    rejected(edited(h -> ((ArrayNode) tensor(h, 0).get("shape")).set(0, h.numberNode(-7))),
        "tensors[0] ('param/0.linear.weight').shape[0] must be an integer in [0, 2147483647], got -7");
    rejected(edited(h -> ((ArrayNode) tensor(h, 0).get("shape")).set(0, h.numberNode(7.5))), ".shape[0] must be");
    rejected(edited(h -> {
      ArrayNode s = tensor(h, 0).putArray("shape");
      s.add(Integer.MAX_VALUE).add(Integer.MAX_VALUE).add(Integer.MAX_VALUE);
    }), "is larger than the");
    rejected(edited(h -> {
      ArrayNode s = tensor(h, 0).putArray("shape");
      for (int i = 0; i < 65; i++) {
        s.add(1);
      }
    }), "65 dimensions");
    // Same element count, other shape: nbytes still matches, so it reads; restore catches it.
  }

  @Test
  void nbytesMismatch() {
    rejected(edited(h -> tensor(h, 0).put("nbytes", tensor(h, 0).get("nbytes").longValue() + 4)),
        "tensors[0] ('param/0.linear.weight'): nbytes is 144 but shape (7, 5) of float32 needs 140");
    rejected(edited(h -> tensor(h, 0).put("nbytes", 0)), "nbytes is 0 but");
    rejected(edited(h -> tensor(h, 0).put("nbytes", -140)), ".nbytes' must be an integer in [0,");
    rejected(edited(h -> tensor(h, 0).put("dtype", "bfloat16")), "nbytes is 140 but shape (7, 5) of bfloat16 needs 70");
  }

  @Test
  void badOffsets() {
    rejected(edited(h -> tensor(h, 2).put("offset", -4)),
        "'tensors[2] ('param/2.linear.weight').offset' must be an integer in [0, 9223372036854775807], got -4");
    rejected(edited(h -> tensor(h, 1).put("offset", tensor(h, 0).get("offset").longValue() + 8)),
        "tensors 'param/0.linear.weight' [0, 140) and 'param/0.linear.bias' [8, 36) overlap");
    rejected(edited(h -> tensor(h, 3).put("offset", h.get("dataBytes").longValue())), "lie outside the data section");
    rejected(edited(h -> tensor(h, 3).put("offset", Long.MAX_VALUE)), "lie outside the data section");
    rejected(edited(h -> tensor(h, 3).put("name", tensor(h, 2).get("name").textValue())), "the name appears twice");
  }

  @Test
  void dataBytesMustMatchTheFile() {
    rejected(edited(h -> h.put("dataBytes", h.get("dataBytes").longValue() - 1)),
        "the header says the data section has");
    byte[] longer = Arrays.copyOf(good, good.length + 8);
    rejected(longer, "data section has " + (good.length - 16 - headerLength(good)) + " bytes, the file has "
        + (good.length + 8 - 16 - headerLength(good)));
  }

  @Test
  void gapsAreAllowedAndCovered() throws IOException {
    // A writer may leave alignment gaps; they are covered by the CRC like everything else.
    byte[] d = data(good);
    byte[] padded = Arrays.copyOf(d, d.length + 64);
    ObjectNode h = header(good);
    h.put("dataBytes", padded.length).put("dataCrc32", CheckpointFixtures.crc(padded));
    assertEquals(sample, decode(assemble(h, padded)));
    padded[padded.length - 1] = 1;
    rejected(assemble(h, padded), "data checksum mismatch");
  }

  @Test
  void headerCrcMustBeTheLastMemberInLowerCaseHex() {
    byte[] raw = headerBody(good);
    byte[] sealed = CheckpointFormat.seal(raw);
    String s = new String(sealed, StandardCharsets.UTF_8);
    String upper = s.substring(0, s.length() - 10) + "ABCDEF12\"}";
    rejected(assembleRaw(upper.getBytes(StandardCharsets.UTF_8), data(good)), "lower-case hex");
    rejected(assembleRaw((s.substring(0, s.length() - 1) + " }").getBytes(StandardCharsets.UTF_8), data(good)),
        "does not end with its");
  }
}
