package dev.sparktrainer.checkpoint;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Shape;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32;

/**
 * The byte layout of a checkpoint file (see package-info for the spec): encoding, and decoding that
 * validates everything before it allocates tensor memory. Streams only; {@link CheckpointIO} adds files.
 */
final class CheckpointFormat {
  static final byte[] MAGIC = "STCKPT01".getBytes(StandardCharsets.US_ASCII);
  /** Magic + header length. */
  static final int PREAMBLE_BYTES = 16;
  static final int FORMAT_VERSION = 1;
  static final long MAX_HEADER_BYTES = 64L << 20;
  static final int MAX_RANK = 64;
  static final int MAX_JSON_DEPTH = 64;

  private static final byte[] SEAL_PREFIX = ",\"headerCrc32\":\"".getBytes(StandardCharsets.US_ASCII);
  /** Length of the sealing suffix ,"headerCrc32":"xxxxxxxx"} */
  static final int SEAL_BYTES = SEAL_PREFIX.length + 8 + 2;

  private static final Set<String> HEADER_KEYS = Set.of("formatVersion", "step", "epoch", "modelSpec",
      "optimizer", "extra", "tensors", "dataBytes", "dataCrc32", "headerCrc32");
  private static final Set<String> TENSOR_KEYS = Set.of("name", "dtype", "shape", "offset", "nbytes");

  /** Strict JSON: duplicate keys, trailing tokens and deep nesting are errors; no source text in messages. */
  static final ObjectMapper JSON = new ObjectMapper(JsonFactory.builder()
      .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
      .disable(StreamReadFeature.INCLUDE_SOURCE_IN_LOCATION)
      .streamReadConstraints(StreamReadConstraints.builder().maxNestingDepth(MAX_JSON_DEPTH).build())
      .build())
      .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

  private CheckpointFormat() {}

  /** One validated tensor entry of a header. */
  record Entry(int index, String name, DType dtype, int[] shape, long offset, int nbytes) {}

  /** A validated header. */
  record Header(long step, int epoch, ObjectNode modelSpec, ObjectNode optimizer, ObjectNode extra,
      List<Entry> tensors, long dataBytes, long dataCrc32) {}

  // ---------------------------------------------------------------------------------------------------
  // writing

  /** Writes {@code data} in format version 1 to {@code out} (not closed). */
  static void write(CheckpointData data, OutputStream out) throws IOException {
    CRC32 crc = new CRC32();
    ObjectNode root = JSON.createObjectNode();
    root.put("formatVersion", FORMAT_VERSION);
    root.put("step", data.step());
    root.put("epoch", data.epoch());
    root.set("modelSpec", data.modelSpec());
    root.set("optimizer", data.optimizer());
    root.set("extra", data.extra());
    ArrayNode list = root.putArray("tensors");
    long offset = 0;
    for (Map.Entry<String, TensorData> e : data.tensors().entrySet()) {
      TensorData t = e.getValue();
      ObjectNode o = list.addObject();
      o.put("name", e.getKey());
      o.put("dtype", t.dtype().wireName());
      ArrayNode shape = o.putArray("shape");
      for (int d : t.shape()) {
        shape.add(d);
      }
      o.put("offset", offset);
      o.put("nbytes", t.byteSize());
      offset += t.byteSize();
      crc.update(t.array());
    }
    root.put("dataBytes", offset);
    root.put("dataCrc32", crc.getValue());
    byte[] header = encodeHeader(root);

    byte[] pre = new byte[PREAMBLE_BYTES];
    ByteBuffer.wrap(pre).order(ByteOrder.LITTLE_ENDIAN).put(MAGIC).putLong(header.length);
    out.write(pre);
    out.write(header);
    for (TensorData t : data.tensors().values()) {
      out.write(t.array());
    }
  }

  /** Serializes a header object (dropping any old headerCrc32 member) and seals it. */
  static byte[] encodeHeader(ObjectNode root) throws IOException {
    ObjectNode copy = root.deepCopy();
    copy.remove("headerCrc32");
    byte[] json = JSON.writeValueAsBytes(copy);
    if (copy.isEmpty() || json[json.length - 1] != '}') {
      throw new IllegalStateException("header must be a non-empty JSON object");
    }
    return seal(Arrays.copyOf(json, json.length - 1));
  }

  /**
   * {@code body} followed by <code>,"headerCrc32":"xxxxxxxx"&#125;</code>, xxxxxxxx = CRC-32 of {@code body}
   * (a JSON object's text without its closing brace).
   */
  static byte[] seal(byte[] body) {
    CRC32 crc = new CRC32();
    crc.update(body);
    byte[] suffix = String.format(",\"headerCrc32\":\"%08x\"}", crc.getValue()).getBytes(StandardCharsets.US_ASCII);
    byte[] out = Arrays.copyOf(body, body.length + suffix.length);
    System.arraycopy(suffix, 0, out, body.length, suffix.length);
    return out;
  }

  // ---------------------------------------------------------------------------------------------------
  // reading

  /** What {@link #read} found: the header and, when asked for, the tensor bytes in header order. */
  record Decoded(Header header, byte[][] tensorBytes) {}

  /**
   * Reads and validates a whole checkpoint of {@code fileLength} bytes from {@code in}. With
   * {@code keepData} false the data section is checked (CRC) but no tensor memory is allocated.
   * {@code source} names the file in messages.
   */
  static Decoded read(InputStream in, long fileLength, String source, boolean keepData) throws IOException {
    if (fileLength < PREAMBLE_BYTES) {
      throw corrupt(source, "the file has " + fileLength + " bytes, fewer than the " + PREAMBLE_BYTES
          + "-byte preamble (magic + header length)");
    }
    byte[] pre = new byte[PREAMBLE_BYTES];
    readFully(in, pre, pre.length, source, "the preamble");
    if (!Arrays.equals(pre, 0, MAGIC.length, MAGIC, 0, MAGIC.length)) {
      throw corrupt(source, "it starts with " + printable(pre, MAGIC.length) + ", not the magic \"STCKPT01\""
          + " (not a spark-trainer checkpoint?)");
    }
    long headerLen = ByteBuffer.wrap(pre).order(ByteOrder.LITTLE_ENDIAN).getLong(MAGIC.length);
    if (headerLen < SEAL_BYTES + 2 || headerLen > MAX_HEADER_BYTES) {
      throw corrupt(source, "header length " + headerLen + " is outside [" + (SEAL_BYTES + 2) + ", "
          + MAX_HEADER_BYTES + "]");
    }
    if (headerLen > fileLength - PREAMBLE_BYTES) {
      throw corrupt(source, "header length " + headerLen + " runs past the end of the file ("
          + fileLength + " bytes)");
    }
    byte[] headerBytes = new byte[(int) headerLen];
    readFully(in, headerBytes, headerBytes.length, source, "the header");
    long dataBytes = fileLength - PREAMBLE_BYTES - headerLen;
    Header h = parseHeader(headerBytes, dataBytes, source);
    byte[][] tensorBytes = keepData ? new byte[h.tensors().size()][] : null;
    readData(in, h, tensorBytes, source);
    if (in.read() != -1) {
      throw corrupt(source, "there are bytes after the " + fileLength + " the file was said to have");
    }
    return new Decoded(h, tensorBytes);
  }

  /** Validates the header; {@code dataBytesInFile} is what the file holds after the header. */
  static Header parseHeader(byte[] h, long dataBytesInFile, String source) throws CheckpointException {
    // 1. the seal: the header CRC is checked before any JSON is parsed
    int n = h.length;
    if (n < SEAL_BYTES + 2) {
      throw corrupt(source, "the header has " + n + " bytes, too few for a header");
    }
    int s = n - SEAL_BYTES;
    if (!Arrays.equals(h, s, s + SEAL_PREFIX.length, SEAL_PREFIX, 0, SEAL_PREFIX.length)
        || h[n - 2] != '"' || h[n - 1] != '}') {
      throw corrupt(source, "the header does not end with its ,\"headerCrc32\":\"xxxxxxxx\"} member");
    }
    long stored = 0;
    for (int i = s + SEAL_PREFIX.length; i < n - 2; i++) {
      int d = Character.digit(h[i], 16);
      if (d < 0 || (h[i] >= 'A' && h[i] <= 'F')) {
        throw corrupt(source, "headerCrc32 is not 8 lower-case hex digits");
      }
      stored = (stored << 4) | d;
    }
    CRC32 crc = new CRC32();
    crc.update(h, 0, s);
    if (crc.getValue() != stored) {
      throw corrupt(source, String.format("header checksum mismatch (stored %08x, computed %08x)", stored,
          crc.getValue()));
    }

    // 2. JSON
    JsonNode rootNode;
    try {
      rootNode = JSON.readTree(h);
    } catch (JsonProcessingException e) {
      String where = e.getLocation() == null ? "" : " at byte " + e.getLocation().getByteOffset();
      throw corrupt(source, "the header is not valid JSON" + where + ": " + e.getOriginalMessage(), e);
    } catch (IOException e) {
      // e.g. CharConversionException: bytes that no Unicode encoding accepts
      throw corrupt(source, "the header is not valid UTF-8 JSON: " + e.getMessage(), e);
    }
    if (rootNode == null || !rootNode.isObject()) {
      throw corrupt(source, "the header is not a JSON object");
    }
    ObjectNode root = (ObjectNode) rootNode;
    long version = longField(root, "formatVersion", "", 0, Long.MAX_VALUE, source);
    if (version != FORMAT_VERSION) {
      throw corrupt(source, "formatVersion is " + version + ", this reader knows only " + FORMAT_VERSION
          + " (written by a newer spark-trainer?)");
    }
    checkKeys(root, HEADER_KEYS, "the header", source);
    JsonNode sealField = root.get("headerCrc32");
    if (sealField == null || !sealField.isTextual()
        || !sealField.textValue().equals(String.format("%08x", stored))) {
      throw corrupt(source, "headerCrc32 is not the header's last member");
    }

    // 3. members
    long step = longField(root, "step", "", 0, Long.MAX_VALUE, source);
    int epoch = (int) longField(root, "epoch", "", 0, Integer.MAX_VALUE, source);
    ObjectNode modelSpec = objectField(root, "modelSpec", "", source);
    ObjectNode optimizer = objectField(root, "optimizer", "", source);
    longField(optimizer, "steps", "optimizer.", 0, Long.MAX_VALUE, source);
    ObjectNode extra = objectField(root, "extra", "", source);
    long dataBytes = longField(root, "dataBytes", "", 0, Long.MAX_VALUE, source);
    long dataCrc = longField(root, "dataCrc32", "", 0, 0xFFFF_FFFFL, source);
    if (dataBytes != dataBytesInFile) {
      throw corrupt(source, "the header says the data section has " + dataBytes + " bytes, the file has "
          + dataBytesInFile + " after the header");
    }
    JsonNode list = root.get("tensors");
    if (list == null) {
      throw corrupt(source, "the header has no 'tensors' member");
    }
    if (!list.isArray()) {
      throw corrupt(source, "'tensors' must be an array, got " + brief(list));
    }

    // 4. tensors: types, sizes, ranges
    List<Entry> entries = new ArrayList<>(list.size());
    Set<String> names = new HashSet<>();
    for (int k = 0; k < list.size(); k++) {
      String where = "tensors[" + k + "]";
      JsonNode t = list.get(k);
      if (!t.isObject()) {
        throw corrupt(source, where + " must be an object, got " + brief(t));
      }
      checkKeys(t, TENSOR_KEYS, where, source);
      JsonNode nameNode = t.get("name");
      if (nameNode == null || !nameNode.isTextual() || nameNode.textValue().isEmpty()) {
        throw corrupt(source, where + ".name must be a non-empty string, got " + brief(nameNode));
      }
      String name = nameNode.textValue();
      where = where + " ('" + abbreviate(name) + "')";
      if (!names.add(name)) {
        throw corrupt(source, where + ": the name appears twice");
      }
      JsonNode dtypeNode = t.get("dtype");
      if (dtypeNode == null || !dtypeNode.isTextual()) {
        throw corrupt(source, where + ".dtype must be a string, got " + brief(dtypeNode));
      }
      DType dtype;
      try {
        dtype = DType.fromWireName(dtypeNode.textValue());
      } catch (IllegalArgumentException e) {
        throw corrupt(source, where + ": unknown dtype '" + abbreviate(dtypeNode.textValue())
            + "' (expected float32, int32 or bfloat16)");
      }
      JsonNode shapeNode = t.get("shape");
      if (shapeNode == null || !shapeNode.isArray()) {
        throw corrupt(source, where + ".shape must be an array of dimensions, got " + brief(shapeNode));
      }
      if (shapeNode.size() > MAX_RANK) {
        throw corrupt(source, where + ".shape has " + shapeNode.size() + " dimensions (at most " + MAX_RANK + ")");
      }
      int[] shape = new int[shapeNode.size()];
      long numel = 1;
      boolean overflow = false;
      for (int i = 0; i < shape.length; i++) {
        JsonNode d = shapeNode.get(i);
        if (!d.isIntegralNumber() || !d.canConvertToLong() || d.longValue() < 0 || d.longValue() > Integer.MAX_VALUE) {
          throw corrupt(source, where + ".shape[" + i + "] must be an integer in [0, " + Integer.MAX_VALUE
              + "], got " + brief(d));
        }
        shape[i] = d.intValue();
        if (!overflow) {
          long hi = Math.multiplyHigh(numel, shape[i]);
          long lo = numel * shape[i];
          if (hi != 0 || lo < 0) {
            overflow = true; // keep checking the other dims, report the size below
          } else {
            numel = lo;
          }
        }
      }
      long needed = overflow ? -1 : multiplyOrMinusOne(numel, dtype.bytes());
      long nbytes = longField(t, "nbytes", where + ".", 0, Long.MAX_VALUE, source);
      if (needed < 0 || needed > TensorData.MAX_BYTES) {
        throw corrupt(source, where + ": shape " + Shape.str(shape) + " of " + dtype.wireName()
            + " is larger than the " + TensorData.MAX_BYTES + " bytes one tensor may have");
      }
      if (nbytes != needed) {
        throw corrupt(source, where + ": nbytes is " + nbytes + " but shape " + Shape.str(shape) + " of "
            + dtype.wireName() + " needs " + needed);
      }
      long offset = longField(t, "offset", where + ".", 0, Long.MAX_VALUE, source);
      if (offset > dataBytes - nbytes) {
        throw corrupt(source, where + ": bytes [" + offset + ", " + offset + " + " + nbytes
            + ") lie outside the data section (" + dataBytes + " bytes)");
      }
      entries.add(new Entry(k, name, dtype, shape, offset, (int) nbytes));
    }
    List<Entry> byOffset = new ArrayList<>(entries);
    byOffset.sort(Comparator.comparingLong(Entry::offset).thenComparingInt(Entry::nbytes));
    for (int k = 1; k < byOffset.size(); k++) {
      Entry a = byOffset.get(k - 1);
      Entry b = byOffset.get(k);
      if (b.offset() < a.offset() + a.nbytes()) {
        throw corrupt(source, "tensors '" + abbreviate(a.name()) + "' [" + a.offset() + ", "
            + (a.offset() + a.nbytes()) + ") and '" + abbreviate(b.name()) + "' [" + b.offset() + ", "
            + (b.offset() + b.nbytes()) + ") overlap");
      }
    }
    return new Header(step, epoch, modelSpec, optimizer, extra, List.copyOf(entries), dataBytes, dataCrc);
  }

  /**
   * Reads the data section in file order, checking its CRC; fills {@code out[entry.index]} when
   * {@code out} is not null. The header has been validated, so every size here is bounded by the file.
   */
  private static void readData(InputStream in, Header h, byte[][] out, String source) throws IOException {
    CRC32 crc = new CRC32();
    List<Entry> byOffset = new ArrayList<>(h.tensors());
    byOffset.sort(Comparator.comparingLong(Entry::offset));
    byte[] scratch = new byte[(int) Math.min(1 << 16, Math.max(1, h.dataBytes()))];
    long pos = 0;
    for (Entry e : byOffset) {
      pos = skipThrough(in, crc, scratch, e.offset() - pos, pos, source);
      if (out != null) {
        byte[] b = new byte[e.nbytes()];
        readFully(in, b, b.length, source, "tensor '" + abbreviate(e.name()) + "'");
        crc.update(b);
        out[e.index()] = b;
        pos += e.nbytes();
      } else {
        pos = skipThrough(in, crc, scratch, e.nbytes(), pos, source);
      }
    }
    skipThrough(in, crc, scratch, h.dataBytes() - pos, pos, source);
    if (crc.getValue() != h.dataCrc32()) {
      throw corrupt(source, String.format("data checksum mismatch (header says %08x, data gives %08x)",
          h.dataCrc32(), crc.getValue()));
    }
  }

  private static long skipThrough(InputStream in, CRC32 crc, byte[] scratch, long n, long pos, String source)
      throws IOException {
    long left = n;
    while (left > 0) {
      int chunk = (int) Math.min(left, scratch.length);
      readFully(in, scratch, chunk, source, "the data section");
      crc.update(scratch, 0, chunk);
      left -= chunk;
    }
    return pos + n;
  }

  private static void readFully(InputStream in, byte[] b, int len, String source, String what) throws IOException {
    int got = in.readNBytes(b, 0, len);
    if (got < len) {
      throw corrupt(source, "the file ends inside " + what);
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // helpers

  static CheckpointException corrupt(String source, String what) {
    return new CheckpointException("checkpoint " + source + " is corrupt or truncated: " + what);
  }

  static CheckpointException corrupt(String source, String what, Throwable cause) {
    return new CheckpointException("checkpoint " + source + " is corrupt or truncated: " + what, cause);
  }

  private static long multiplyOrMinusOne(long a, long b) {
    long hi = Math.multiplyHigh(a, b);
    long lo = a * b;
    return hi != 0 || lo < 0 ? -1 : lo;
  }

  private static long longField(JsonNode obj, String key, String prefix, long min, long max, String source)
      throws CheckpointException {
    JsonNode v = obj.get(key);
    if (v == null) {
      throw corrupt(source, "the header has no '" + prefix + key + "' member");
    }
    if (!v.isIntegralNumber() || !v.canConvertToLong() || v.longValue() < min || v.longValue() > max) {
      throw corrupt(source, "'" + prefix + key + "' must be an integer in [" + min + ", " + max + "], got "
          + brief(v));
    }
    return v.longValue();
  }

  private static ObjectNode objectField(ObjectNode obj, String key, String prefix, String source)
      throws CheckpointException {
    JsonNode v = obj.get(key);
    if (v == null) {
      throw corrupt(source, "the header has no '" + prefix + key + "' member");
    }
    if (!v.isObject()) {
      throw corrupt(source, "'" + prefix + key + "' must be a JSON object, got " + brief(v));
    }
    return (ObjectNode) v;
  }

  private static void checkKeys(JsonNode obj, Set<String> allowed, String where, String source)
      throws CheckpointException {
    for (Iterator<String> it = obj.fieldNames(); it.hasNext(); ) {
      String k = it.next();
      if (!allowed.contains(k)) {
        throw corrupt(source, where + " has an unknown member '" + abbreviate(k) + "'");
      }
    }
  }

  /** A short description of a JSON value for messages (never the whole of a large value). */
  private static String brief(JsonNode n) {
    if (n == null) {
      return "nothing";
    }
    if (n.isContainerNode()) {
      return n.getNodeType().toString().toLowerCase(java.util.Locale.ROOT) + " of " + n.size();
    }
    return abbreviate(n.toString());
  }

  private static String abbreviate(String s) {
    return s.length() <= 60 ? s : s.substring(0, 57) + "...";
  }

  private static String printable(byte[] b, int len) {
    StringBuilder sb = new StringBuilder("\"");
    for (int i = 0; i < len; i++) {
      int c = b[i] & 0xff;
      if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
        sb.append((char) c);
      } else {
        sb.append(String.format("\\x%02x", c));
      }
    }
    return sb.append('"').toString();
  }

  /** Decoded header + bytes -> CheckpointData (everything already validated by {@link #parseHeader}). */
  static CheckpointData toData(Decoded d) {
    Header h = d.header();
    Map<String, TensorData> tensors = new LinkedHashMap<>();
    for (Entry e : h.tensors()) {
      tensors.put(e.name(), TensorData.wrapOwned(e.dtype(), e.shape(), d.tensorBytes()[e.index()]));
    }
    return CheckpointData.ofValidated(h.step(), h.epoch(), h.modelSpec(), h.optimizer(), h.extra(), tensors);
  }
}
