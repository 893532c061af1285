package dev.sparktrainer.checkpoint;

import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.Optimizer;
import dev.sparktrainer.optim.OptimizerConfig;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.zip.CRC32;

/** Shared set-up for the checkpoint tests: a small trained model and byte-level file surgery. */
final class CheckpointFixtures {
  static final ModelSpec SPEC = ModelSpec.builder().input(5).linear(7).relu().linear(3).build();
  static final OptimizerConfig ADAMW = OptimizerConfig.adamw(1e-3);

  private CheckpointFixtures() {}

  /** A model and its optimizer on one device. */
  record Trainee(Model model, Optimizer opt) {}

  /** A fresh model (initialized from {@code seed}) with a fresh AdamW optimizer, no steps taken. */
  static Trainee fresh(Device device, ModelSpec spec, OptimizerConfig cfg, long seed) {
    Model m = new Model(spec, device);
    m.initialize(seed);
    return new Trainee(m, cfg.create(device, m.parameters()));
  }

  /** {@link #fresh} plus {@code steps} optimizer steps on seeded random gradients (non-zero state). */
  static Trainee trained(Device device, ModelSpec spec, OptimizerConfig cfg, long seed, int steps) {
    Trainee t = fresh(device, spec, cfg, seed);
    for (int s = 0; s < steps; s++) {
      fillGrads(device, t.model(), seed * 31 + s);
      t.opt().step(1e-2);
    }
    return t;
  }

  /** Random gradients in the real elements, zero in the padding (as backward leaves them). */
  static void fillGrads(Device device, Model m, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] g = new float[m.parameters().grads().size()];
    for (var e : m.parameters().entries()) {
      for (long k = e.offset(); k < e.offset() + e.numel(); k++) {
        g[(int) k] = (float) r.nextGaussian();
      }
    }
    device.upload(g, 0, m.parameters().grads());
  }

  /** The sample checkpoint: the small model after two AdamW steps, with trainer extras. */
  static CheckpointData sample() {
    try (CpuDevice dev = new CpuDevice()) {
      Trainee t = trained(dev, SPEC, ADAMW, 42, 2);
      ObjectNode extra = CheckpointFormat.JSON.createObjectNode();
      extra.put("samplerPosition", 123).put("seed", 7L);
      extra.putObject("schedule").put("warmup", 10).put("name", "cosine");
      return Checkpoints.capture(t.model(), t.opt(), 17, 2, extra);
    }
  }

  static float[] host(Device device, Tensor t) {
    float[] out = new float[t.size()];
    device.download(t, out, 0);
    return out;
  }

  /** Raw bits, so that assertArrayEquals compares bitwise. */
  static int[] bits(float[] a) {
    int[] out = new int[a.length];
    for (int i = 0; i < a.length; i++) {
      out[i] = Float.floatToRawIntBits(a[i]);
    }
    return out;
  }

  static byte[] encode(CheckpointData d) {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    try {
      CheckpointIO.writeTo(d, out);
    } catch (IOException e) {
      throw new AssertionError(e);
    }
    return out.toByteArray();
  }

  static CheckpointData decode(byte[] file) throws IOException {
    return CheckpointIO.readFrom(new ByteArrayInputStream(file), file.length);
  }

  static long headerLength(byte[] file) {
    return ByteBuffer.wrap(file).order(ByteOrder.LITTLE_ENDIAN).getLong(8);
  }

  static byte[] withHeaderLength(byte[] file, long h) {
    byte[] out = file.clone();
    ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN).putLong(8, h);
    return out;
  }

  /** The parsed header of a valid file (including its headerCrc32 member). */
  static ObjectNode header(byte[] file) {
    int h = (int) headerLength(file);
    try {
      return (ObjectNode) CheckpointFormat.JSON.readTree(Arrays.copyOfRange(file, 16, 16 + h));
    } catch (IOException e) {
      throw new AssertionError(e);
    }
  }

  /** The raw header bytes without the seal, i.e. the JSON text up to (not including) ,"headerCrc32". */
  static byte[] headerBody(byte[] file) {
    int h = (int) headerLength(file);
    return Arrays.copyOfRange(file, 16, 16 + h - CheckpointFormat.SEAL_BYTES);
  }

  static byte[] data(byte[] file) {
    int h = (int) headerLength(file);
    return Arrays.copyOfRange(file, 16 + h, file.length);
  }

  /** A file with this header (re-sealed, so its header CRC is right) and these data bytes. */
  static byte[] assemble(ObjectNode header, byte[] data) {
    try {
      return assembleRaw(CheckpointFormat.encodeHeader(header), data);
    } catch (IOException e) {
      throw new AssertionError(e);
    }
  }

  /** A file from a header body (JSON text without its closing brace) sealed with a correct header CRC. */
  static byte[] assembleSealed(byte[] body, byte[] data) {
    return assembleRaw(CheckpointFormat.seal(body), data);
  }

  static byte[] assembleRaw(byte[] header, byte[] data) {
    ByteBuffer b = ByteBuffer.allocate(16 + header.length + data.length).order(ByteOrder.LITTLE_ENDIAN);
    b.put(CheckpointFormat.MAGIC).putLong(header.length).put(header).put(data);
    return b.array();
  }

  static long crc(byte[] data) {
    CRC32 c = new CRC32();
    c.update(data);
    return c.getValue();
  }
}
