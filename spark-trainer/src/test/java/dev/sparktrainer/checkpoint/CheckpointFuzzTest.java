package dev.sparktrainer.checkpoint;

import static dev.sparktrainer.checkpoint.CheckpointFixtures.assemble;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.assembleSealed;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.data;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.decode;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.encode;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.header;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.headerBody;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.headerLength;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.withHeaderLength;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Seeded fuzzing of the reader. Two families:
 * <ul>
 *   <li>raw damage (bit flips, byte writes, truncation, insertion, header-length edits) without fixing
 *       any checksum: the only allowed outcomes are a CheckpointException or, when the damage cancelled
 *       out, a read identical to the original;</li>
 *   <li>hostile headers: structural edits of the header JSON (and garbage in its text), re-sealed with a
 *       correct header CRC so they reach the validators: the outcome is a CheckpointException or a read
 *       of a self-consistent checkpoint.</li>
 * </ul>
 * Any other exception or error (NPE, index errors, OOM...) fails the test with the iteration's recipe.
 */
class CheckpointFuzzTest {
  private static final JsonNodeFactory NF = JsonNodeFactory.instance;
  private static CheckpointData sample;
  private static byte[] good;
  private static ObjectNode goodHeader;
  private static byte[] goodData;

  @BeforeAll
  static void makeSample() {
    sample = CheckpointFixtures.sample();
    good = encode(sample);
    goodHeader = header(good);
    goodData = data(good);
  }

  @Test
  void rawDamageIsRejectedOrCancelsOut() {
    SplittableRandom r = new SplittableRandom(0x5eed_c0deL);
    int rejected = 0;
    int identical = 0;
    for (int it = 0; it < 2000; it++) {
      StringBuilder recipe = new StringBuilder();
      byte[] f = mutateRaw(good, r, recipe);
      try {
        CheckpointData d = decode(f);
        assertEquals(sample, d, "iteration " + it + " (" + recipe + ") read a different checkpoint");
        identical++;
      } catch (CheckpointException e) {
        assertTrue(e.getMessage().startsWith("checkpoint <stream> is corrupt or truncated: "), e.getMessage());
        rejected++;
      } catch (Throwable t) {
        throw new AssertionError("iteration " + it + " (" + recipe + ") threw " + t, t);
      }
    }
    assertEquals(2000, rejected + identical);
    assertTrue(rejected > 1500, "rejected " + rejected);
    assertTrue(identical > 20, "cancelling damage should read back identical; got " + identical);
  }

  @Test
  void hostileHeadersAreRejectedCleanly() {
    SplittableRandom r = new SplittableRandom(20240611L);
    int rejected = 0;
    int accepted = 0;
    for (int it = 0; it < 1000; it++) {
      StringBuilder recipe = new StringBuilder();
      byte[] f = mutateHeader(r, recipe);
      try {
        CheckpointData d = decode(f);
        for (TensorData t : d.tensors().values()) {
          assertEquals(t.numel() * t.dtype().bytes(), t.byteSize(), recipe.toString());
        }
        accepted++;
      } catch (CheckpointException e) {
        assertTrue(e.getMessage().startsWith("checkpoint <stream> is corrupt or truncated: "), e.getMessage());
        rejected++;
      } catch (Throwable t) {
        throw new AssertionError("iteration " + it + " (" + recipe + ") threw " + t, t);
      }
    }
    assertTrue(rejected > 700, "rejected " + rejected);
    assertTrue(accepted > 0, "some edits (e.g. reordering tensors) keep a valid file");
  }

  // ---- raw damage ----

  private static byte[] mutateRaw(byte[] src, SplittableRandom r, StringBuilder recipe) {
    byte[] f = src.clone();
    int h = (int) headerLength(src);
    switch (r.nextInt(11)) {
      case 0 -> {
        int n = 1 + r.nextInt(4);
        for (int k = 0; k < n; k++) {
          flip(f, r.nextInt(f.length), r.nextInt(8), recipe);
        }
      }
      case 1 -> flip(f, 16 + r.nextInt(h), r.nextInt(8), recipe);
      case 2 -> flip(f, 16 + h + r.nextInt(f.length - 16 - h), r.nextInt(8), recipe);
      case 3 -> {
        int pos = r.nextInt(f.length);
        int v = r.nextInt(4) == 0 ? f[pos] : r.nextInt(256); // sometimes the same value again
        recipe.append("set byte ").append(pos).append(" to ").append(v & 0xff);
        f[pos] = (byte) v;
      }
      case 4 -> {
        int n = r.nextInt(f.length);
        recipe.append("truncate to ").append(n);
        f = Arrays.copyOf(f, n);
      }
      case 5 -> {
        long[] choices = {0, 1, -1, Long.MIN_VALUE, Long.MAX_VALUE, h - 1, h + 1, f.length, f.length - 16,
            (64L << 20) + 1, 64L << 20, r.nextLong(), r.nextInt(f.length), h};
        long v = choices[r.nextInt(choices.length)];
        recipe.append("header length ").append(v);
        f = withHeaderLength(f, v);
      }
      case 6 -> {
        int pos = r.nextInt(f.length + 1);
        byte[] ins = new byte[1 + r.nextInt(8)];
        r.nextBytes(ins);
        recipe.append("insert ").append(ins.length).append(" at ").append(pos);
        byte[] out = new byte[f.length + ins.length];
        System.arraycopy(f, 0, out, 0, pos);
        System.arraycopy(ins, 0, out, pos, ins.length);
        System.arraycopy(f, pos, out, pos + ins.length, f.length - pos);
        f = out;
      }
      case 7 -> {
        int pos = r.nextInt(f.length);
        int n = 1 + r.nextInt(Math.min(16, f.length - pos));
        recipe.append("delete ").append(n).append(" at ").append(pos);
        byte[] out = new byte[f.length - n];
        System.arraycopy(f, 0, out, 0, pos);
        System.arraycopy(f, pos + n, out, pos, f.length - pos - n);
        f = out;
      }
      case 8, 9 -> {
        // damage that cancels out: the same bit flipped twice (plus, sometimes, one real flip)
        int pos = r.nextInt(f.length);
        int bit = r.nextInt(8);
        flip(f, pos, bit, recipe);
        flip(f, pos, bit, recipe);
        if (r.nextInt(3) == 0) {
          flip(f, r.nextInt(f.length), r.nextInt(8), recipe);
        }
      }
      default -> {
        byte[] tail = new byte[1 + r.nextInt(16)];
        r.nextBytes(tail);
        recipe.append("append ").append(tail.length);
        f = Arrays.copyOf(f, f.length + tail.length);
        System.arraycopy(tail, 0, f, f.length - tail.length, tail.length);
      }
    }
    return f;
  }

  private static void flip(byte[] f, int pos, int bit, StringBuilder recipe) {
    recipe.append("flip ").append(pos).append('.').append(bit).append(' ');
    f[pos] ^= (byte) (1 << bit);
  }

  // ---- hostile, correctly sealed headers ----

  private static final String[] TOP = {"formatVersion", "step", "epoch", "modelSpec", "optimizer", "extra",
      "tensors", "dataBytes", "dataCrc32"};
  private static final String[] ENTRY = {"name", "dtype", "shape", "offset", "nbytes"};

  private static JsonNode junk(SplittableRandom r, ObjectNode h) {
    return switch (r.nextInt(12)) {
      case 0 -> NF.textNode("x");
      case 1 -> NF.numberNode(-1);
      case 2 -> NF.numberNode(1.5);
      case 3 -> NF.numberNode(new java.math.BigInteger("123456789012345678901234567890"));
      case 4 -> NF.arrayNode().add(1).add(2);
      case 5 -> NF.objectNode().put("a", 1);
      case 6 -> NF.nullNode();
      case 7 -> NF.booleanNode(true);
      case 8 -> NF.numberNode(Long.MAX_VALUE);
      case 9 -> NF.numberNode(Integer.MAX_VALUE + 1L);
      case 10 -> NF.numberNode(r.nextLong());
      default -> NF.numberNode(r.nextInt(h.get("dataBytes").intValue() + 8));
    };
  }

  private static byte[] mutateHeader(SplittableRandom r, StringBuilder recipe) {
    ObjectNode h = goodHeader.deepCopy();
    byte[] data = goodData;
    ArrayNode tensors = (ArrayNode) h.get("tensors");
    ObjectNode t = (ObjectNode) tensors.get(r.nextInt(tensors.size()));
    long dataBytes = h.get("dataBytes").longValue();
    switch (r.nextInt(14)) {
      case 0 -> {
        String k = TOP[r.nextInt(TOP.length)];
        recipe.append("remove ").append(k);
        h.remove(k);
      }
      case 1 -> {
        String k = TOP[r.nextInt(TOP.length)];
        JsonNode v = junk(r, h);
        recipe.append("set ").append(k).append(" = ").append(v);
        h.set(k, v);
      }
      case 2 -> {
        String k = ENTRY[r.nextInt(ENTRY.length)];
        recipe.append("remove tensor ").append(k);
        t.remove(k);
      }
      case 3 -> {
        String k = ENTRY[r.nextInt(ENTRY.length)];
        JsonNode v = junk(r, h);
        recipe.append("set tensor ").append(k).append(" = ").append(v);
        t.set(k, v);
      }
      case 4 -> {
        ObjectNode other = (ObjectNode) tensors.get(r.nextInt(tensors.size()));
        long nb = t.get("nbytes").longValue();
        long[] choices = {-1, 0, other.get("offset").longValue(), other.get("offset").longValue() + 4,
            dataBytes, dataBytes - nb + 1, dataBytes - nb, Long.MAX_VALUE, Long.MIN_VALUE,
            r.nextLong(dataBytes + 1)};
        long v = choices[r.nextInt(choices.length)];
        recipe.append("offset = ").append(v);
        t.put("offset", v);
      }
      case 5 -> {
        long[] choices = {0, -4, 4, 1L << 31, 1L << 40, Long.MAX_VALUE};
        long v = t.get("nbytes").longValue() + choices[r.nextInt(choices.length)];
        recipe.append("nbytes = ").append(v);
        t.put("nbytes", v);
      }
      case 6 -> {
        ArrayNode shape = (ArrayNode) t.get("shape");
        int kind = r.nextInt(5);
        recipe.append("shape edit ").append(kind);
        switch (kind) {
          case 0 -> shape.add(1 + r.nextInt(3));
          case 1 -> {
            if (!shape.isEmpty()) {
              shape.remove(shape.size() - 1);
            }
          }
          case 2 -> shape.insert(0, new int[] {-1, 0, Integer.MAX_VALUE, 65536}[r.nextInt(4)]);
          case 3 -> {
            // same element count, other shape: still a well-formed file
            List<JsonNode> dims = new ArrayList<>();
            shape.forEach(dims::add);
            shape.removeAll();
            for (int i = dims.size() - 1; i >= 0; i--) {
              shape.add(dims.get(i));
            }
          }
          default -> shape.add(NF.numberNode(2147483648L));
        }
      }
      case 7 -> {
        String[] dtypes = {"float32", "int32", "bfloat16", "float64", "", "FLOAT32", "float32\u0000"};
        String v = dtypes[r.nextInt(dtypes.length)];
        recipe.append("dtype = ").append(v);
        t.put("dtype", v);
      }
      case 8 -> {
        ObjectNode other = (ObjectNode) tensors.get(r.nextInt(tensors.size()));
        recipe.append("rename to ").append(other.get("name"));
        t.set("name", other.get("name"));
      }
      case 9 -> {
        long v = r.nextBoolean() ? dataBytes + r.nextInt(-8, 9) : r.nextLong();
        recipe.append("dataBytes = ").append(v);
        h.put("dataBytes", v);
        if (r.nextBoolean()) {
          h.put("dataCrc32", r.nextLong(1L << 32));
          recipe.append(", random dataCrc32");
        }
      }
      case 10 -> {
        long v = r.nextInt(4);
        recipe.append("formatVersion = ").append(v);
        h.put("formatVersion", v);
      }
      case 11 -> {
        recipe.append("unknown member");
        (r.nextBoolean() ? h : t).put("unexpected" + r.nextInt(3), 1);
      }
      case 12 -> {
        // reorder or drop tensor entries (dropping leaves a gap: still a well-formed file)
        List<JsonNode> list = new ArrayList<>();
        tensors.forEach(list::add);
        tensors.removeAll();
        if (r.nextBoolean()) {
          recipe.append("reverse tensors");
          for (int i = list.size() - 1; i >= 0; i--) {
            tensors.add(list.get(i));
          }
        } else {
          int drop = r.nextInt(list.size());
          recipe.append("drop tensor ").append(drop);
          for (int i = 0; i < list.size(); i++) {
            if (i != drop) {
              tensors.add(list.get(i));
            }
          }
        }
      }
      default -> {
        // garbage inside the JSON text, re-sealed so that the JSON parser sees it
        byte[] body = headerBody(good);
        int n = 1 + r.nextInt(4);
        for (int k = 0; k < n; k++) {
          int pos = r.nextInt(body.length);
          recipe.append("text byte ").append(pos).append(' ');
          body[pos] = (byte) r.nextInt(256);
        }
        return assembleSealed(body, data);
      }
    }
    return assemble(h, data);
  }

  /** Sanity check for the helper: an unmodified header re-sealed is read back identically. */
  @Test
  void reSealingAnUnmodifiedHeaderIsIdentity() throws java.io.IOException {
    assertEquals(sample, decode(assemble(header(good), data(good))));
    Iterator<String> names = header(good).fieldNames();
    List<String> order = new ArrayList<>();
    names.forEachRemaining(order::add);
    assertEquals(List.of("formatVersion", "step", "epoch", "modelSpec", "optimizer", "extra", "tensors",
        "dataBytes", "dataCrc32", "headerCrc32"), order);
  }
}
