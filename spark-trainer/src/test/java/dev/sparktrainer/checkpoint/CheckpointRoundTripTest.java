package dev.sparktrainer.checkpoint;

import static dev.sparktrainer.checkpoint.CheckpointFixtures.ADAMW;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.SPEC;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.bits;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.decode;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.encode;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.fillGrads;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.fresh;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.host;
import static dev.sparktrainer.checkpoint.CheckpointFixtures.trained;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.checkpoint.CheckpointFixtures.Trainee;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.OptimizerConfig;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class CheckpointRoundTripTest {
  private CpuDevice dev;

  @BeforeEach
  void open() {
    dev = new CpuDevice();
  }

  @AfterEach
  void close() {
    dev.close();
  }

  private void assertSameState(Trainee a, Trainee b) {
    ParameterSet pa = a.model().parameters();
    ParameterSet pb = b.model().parameters();
    assertArrayEquals(bits(host(dev, pa.params())), bits(host(dev, pb.params())), "parameters differ");
    assertEquals(a.opt().state().keySet(), b.opt().state().keySet());
    for (String s : a.opt().state().keySet()) {
      assertArrayEquals(bits(host(dev, a.opt().state().get(s))), bits(host(dev, b.opt().state().get(s))),
          "optimizer state '" + s + "' differs");
    }
    assertEquals(a.opt().steps(), b.opt().steps());
  }

  @Test
  void fileRoundTripAndRestoreAreBitwise(@TempDir Path tmp) throws IOException {
    Trainee src = trained(dev, SPEC, ADAMW, 42, 3);
    ObjectNode extra = CheckpointFormat.JSON.createObjectNode().put("samplerPosition", 96).put("rngSeed", 7L);
    CheckpointData saved = Checkpoints.capture(src.model(), src.opt(), 3, 1, extra);
    for (String s : src.opt().state().keySet()) {
      float[] v = host(dev, src.opt().state().get(s));
      assertTrue(bits(v).length > 0 && java.util.Arrays.stream(bits(v)).anyMatch(x -> x != 0),
          "state '" + s + "' should be non-zero after a step");
    }

    String path = "file://" + tmp.toAbsolutePath() + "/run/" + CheckpointIO.fileName(3);
    Configuration conf = new Configuration();
    CheckpointIO.write(saved, path, conf);
    CheckpointData read = CheckpointIO.read(path, conf);
    assertEquals(saved, read);
    assertEquals(3, read.step());
    assertEquals(1, read.epoch());
    assertEquals(96, read.extra().get("samplerPosition").intValue());
    assertEquals(3, read.optimizerSteps());
    assertEquals(SPEC, ModelSpec.fromJsonNode(read.modelSpec()));

    Trainee dst = fresh(dev, SPEC, ADAMW, 999); // other weights, zero state
    assertNotEquals(List.of(host(dev, src.model().parameters().params())[0]),
        List.of(host(dev, dst.model().parameters().params())[0]));
    Checkpoints.restore(read, dst.model(), dst.opt());
    assertSameState(src, dst);

    // Training on from the restored state matches training on from the original, bit for bit.
    for (Trainee t : List.of(src, dst)) {
      fillGrads(dev, t.model(), 12345);
      t.opt().step(1e-2);
    }
    assertSameState(src, dst);
  }

  @Test
  void storesRealElementsOnlyWithTheDocumentedNames() {
    Trainee t = trained(dev, SPEC, ADAMW, 1, 1);
    CheckpointData d = Checkpoints.capture(t.model(), t.opt(), 1, 0, null);
    ParameterSet ps = t.model().parameters();
    assertEquals(ps.entries().size() * 3, d.tensors().size());
    assertEquals(ps.parameterCount() * 4 * 3, d.dataBytes());
    assertTrue(ps.totalElements() > ps.parameterCount(), "layout should have padding for this test");
    for (ParameterSet.Entry e : ps.entries()) {
      for (String name : List.of(Checkpoints.paramName(e.name()), Checkpoints.stateName("m", e.name()),
          Checkpoints.stateName("v", e.name()))) {
        TensorData td = d.tensor(name);
        assertEquals(DType.FLOAT32, td.dtype(), name);
        assertArrayEquals(e.shape(), td.shape(), name);
      }
    }
    assertTrue(d.extra().isEmpty());
    assertEquals("adamw", d.optimizer().get("type").textValue());
  }

  @Test
  void restoreIntoAnotherModelFailsBeforeTouchingIt() throws IOException {
    CheckpointData saved = decode(encode(CheckpointFixtures.sample()));
    ModelSpec other = ModelSpec.builder().input(5).linear(8).relu().linear(3).build();
    Trainee dst = trained(dev, other, ADAMW, 5, 1);
    float[] before = host(dev, dst.model().parameters().params());
    float[] mBefore = host(dev, dst.opt().state().get("m"));
    CheckpointException e = assertThrows(CheckpointException.class,
        () -> Checkpoints.restore(saved, dst.model(), dst.opt()));
    assertTrue(e.getMessage().startsWith("checkpoint is for model " + SPEC + ", this job trains " + other),
        e.getMessage());
    assertArrayEquals(bits(before), bits(host(dev, dst.model().parameters().params())));
    assertArrayEquals(bits(mBefore), bits(host(dev, dst.opt().state().get("m"))));
    assertEquals(1, dst.opt().steps());
  }

  @Test
  void restoreWithAnotherOptimizerTypeFails() throws IOException {
    CheckpointData saved = CheckpointFixtures.sample();
    Trainee dst = fresh(dev, SPEC, OptimizerConfig.sgd(0.1).withMomentum(0.9), 5);
    float[] before = host(dev, dst.model().parameters().params());
    CheckpointException e = assertThrows(CheckpointException.class,
        () -> Checkpoints.restore(saved, dst.model(), dst.opt()));
    assertTrue(e.getMessage().contains("optimizer") && e.getMessage().contains("sgd"), e.getMessage());
    assertArrayEquals(bits(before), bits(host(dev, dst.model().parameters().params())));
    assertEquals(0, dst.opt().steps());
  }

  @Test
  void restoreRejectsAnInvalidModelSpecInTheCheckpoint() {
    CheckpointData saved = CheckpointFixtures.sample();
    ObjectNode spec = saved.modelSpec();
    ((ObjectNode) spec.get("layers").get(0)).put("type", "conv3d");
    CheckpointData bad = withTensors(
        CheckpointData.builder().step(1).modelSpec(spec).optimizer(saved.optimizer()).build(), saved.tensors());
    Trainee dst = fresh(dev, SPEC, ADAMW, 5);
    CheckpointException e = assertThrows(CheckpointException.class,
        () -> Checkpoints.restore(bad, dst.model(), dst.opt()));
    assertTrue(e.getMessage().startsWith("checkpoint holds an invalid model spec: ")
        && e.getMessage().contains("unknown layer type 'conv3d'"), e.getMessage());
  }

  @Test
  void restoreKeepsTheJobsHyperParameters() throws IOException {
    CheckpointData saved = CheckpointFixtures.sample();
    Trainee dst = fresh(dev, SPEC, OptimizerConfig.adamw(5e-4).withWeightDecay(0), 5);
    Checkpoints.restore(saved, dst.model(), dst.opt());
    assertEquals(2, dst.opt().steps());
    assertEquals(5e-4, dst.opt().config().lr());
  }

  /** A copy of {@code d} with its tensors replaced. */
  private static CheckpointData withTensors(CheckpointData d, Map<String, TensorData> tensors) {
    CheckpointData.Builder b = CheckpointData.builder().step(d.step()).epoch(d.epoch())
        .modelSpec(d.modelSpec()).optimizer(d.optimizer()).extra(d.extra());
    tensors.forEach(b::tensor);
    return b.build();
  }

  @Test
  void restoreRejectsMissingExtraAndMisshapenTensors() {
    CheckpointData saved = CheckpointFixtures.sample();
    Trainee dst = fresh(dev, SPEC, ADAMW, 5);
    float[] before = host(dev, dst.model().parameters().params());

    var missing = new java.util.LinkedHashMap<>(saved.tensors());
    missing.remove("optim/v/0.linear.weight");
    CheckpointException e1 = assertThrows(CheckpointException.class,
        () -> Checkpoints.restore(withTensors(saved, missing), dst.model(), dst.opt()));
    assertTrue(e1.getMessage().contains("lacks 'optim/v/0.linear.weight' float32(7, 5)"), e1.getMessage());

    var extra = new java.util.LinkedHashMap<>(saved.tensors());
    extra.put("param/9.linear.weight", TensorData.ofFloats(new int[] {2}, new float[] {1, 2}));
    CheckpointException e2 = assertThrows(CheckpointException.class,
        () -> Checkpoints.restore(withTensors(saved, extra), dst.model(), dst.opt()));
    assertTrue(e2.getMessage().contains("has 'param/9.linear.weight'"), e2.getMessage());

    var misshapen = new java.util.LinkedHashMap<>(saved.tensors());
    float[] w = saved.tensor("param/0.linear.weight").toFloats();
    misshapen.put("param/0.linear.weight", TensorData.ofFloats(new int[] {5, 7}, w));
    CheckpointException e3 = assertThrows(CheckpointException.class,
        () -> Checkpoints.restore(withTensors(saved, misshapen), dst.model(), dst.opt()));
    assertTrue(e3.getMessage().contains("'param/0.linear.weight' is float32(5, 7) in the checkpoint, float32(7, 5) here"),
        e3.getMessage());

    assertArrayEquals(bits(before), bits(host(dev, dst.model().parameters().params())));
    assertEquals(0, dst.opt().steps());
  }

  @Test
  void allDtypesAndEmptyTensorsRoundTrip() throws IOException {
    ByteBuffer bf16 = ByteBuffer.allocate(6).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    bf16.putShort((short) 0x3f80).putShort((short) 0xc000).putShort((short) 0x7fc0).flip();
    CheckpointData d = CheckpointData.builder().step(0).epoch(0)
        .modelSpec(SPEC.toJsonNode())
        .optimizer(ADAMW.toJsonNode().put("steps", 0))
        .tensor("ints", TensorData.ofInts(new int[] {2, 2}, new int[] {1, -2, Integer.MAX_VALUE, Integer.MIN_VALUE}))
        .tensor("empty", TensorData.ofFloats(new int[] {0, 3}, new float[0]))
        .tensor("bf16", TensorData.of(DType.BFLOAT16, new int[] {3}, bf16))
        .tensor("scalar", TensorData.ofFloats(new int[0], new float[] {-0.0f}))
        .build();
    CheckpointData back = decode(encode(d));
    assertEquals(d, back);
    assertEquals(List.of("ints", "empty", "bf16", "scalar"), List.copyOf(back.tensors().keySet()));
    assertArrayEquals(new int[] {1, -2, Integer.MAX_VALUE, Integer.MIN_VALUE}, back.tensor("ints").toInts());
    float[] b = back.tensor("bf16").toFloats();
    assertEquals(1.0f, b[0]);
    assertEquals(-2.0f, b[1]);
    assertTrue(Float.isNaN(b[2]));
    assertEquals(Float.floatToRawIntBits(-0.0f), Float.floatToRawIntBits(back.tensor("scalar").toFloats()[0]));
  }

  @Test
  void dataIsImmutable() {
    CheckpointData d = CheckpointFixtures.sample();
    d.extra().put("samplerPosition", 0);
    d.modelSpec().removeAll();
    assertEquals(123, d.extra().get("samplerPosition").intValue());
    assertFalse(d.modelSpec().isEmpty());
    assertThrows(UnsupportedOperationException.class, () -> d.tensors().clear());
    assertThrows(java.nio.ReadOnlyBufferException.class, () -> d.tensor("param/2.linear.bias").bytes().put(0, (byte) 1));
    float[] values = {1, 2};
    TensorData t = TensorData.ofFloats(new int[] {2}, values);
    values[0] = 5;
    assertEquals(1f, t.toFloats()[0]);
    assertThrows(IllegalArgumentException.class, () -> TensorData.ofFloats(new int[] {3}, values));
    assertThrows(IllegalArgumentException.class,
        () -> CheckpointData.builder().modelSpec(SPEC.toJsonNode()).optimizer(ADAMW.toJsonNode()).build(),
        "optimizer JSON without steps");
  }

  @Test
  void writeIsAtomicAndReplacesAnOlderFile(@TempDir Path tmp) throws IOException {
    Configuration conf = new Configuration();
    String dir = "file://" + tmp.toAbsolutePath();
    CheckpointData a = CheckpointFixtures.sample();
    String path = CheckpointIO.pathFor(dir, 17);
    CheckpointIO.write(a, path, conf);
    CheckpointIO.write(a, path, conf); // same step twice: replaced, not an error
    assertEquals(a, CheckpointIO.read(path, conf));
    try (Stream<Path> files = Files.list(tmp)) {
      List<String> names = files.map(p -> p.getFileName().toString()).sorted().toList();
      assertTrue(names.contains("ckpt-17.stckpt"), names.toString());
      assertTrue(names.stream().noneMatch(n -> n.contains(".tmp")), "temporary files left: " + names);
    }
  }
}
