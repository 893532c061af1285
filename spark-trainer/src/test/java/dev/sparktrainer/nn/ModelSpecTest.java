package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.ParameterSet;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.api.io.TempDir;

/** ModelSpec: builder, mlp(), JSON round trips, and the exact error messages users see. */
class ModelSpecTest {

  private static String error(Executable e) {
    return assertThrows(IllegalArgumentException.class, e).getMessage();
  }

  private static String jsonError(String json) {
    return error(() -> ModelSpec.fromJson(json));
  }

  @Test
  void builderBuildsAndInfersShapes() {
    ModelSpec s = ModelSpec.builder().input(1, 28, 28).flatten().linear(256).relu().dropout(0.1f)
        .linear(64, false).gelu().linear(10).build();
    assertArrayEquals(new int[] {1, 28, 28}, s.input());
    assertEquals(784, s.inputSize());
    assertArrayEquals(new int[] {10}, s.outputShape());
    assertEquals(10, s.outputSize());
    assertEquals(7, s.layers().size());
    assertEquals(new ModelSpec.LayerSpec("linear", 64, false, 0f), s.layers().get(4));
    List<Layer> layers = s.newLayers();
    assertInstanceOf(Flatten.class, layers.get(0));
    assertEquals(256, ((Linear) layers.get(1)).units());
    assertEquals(Activation.Kind.RELU, ((Activation) layers.get(2)).kind());
    assertEquals(0.1f, ((Dropout) layers.get(3)).p());
    assertEquals(Activation.Kind.GELU, ((Activation) layers.get(5)).kind());
    // The spec is immutable: the input array handed out is a copy.
    s.input()[0] = 99;
    assertEquals(784, s.inputSize());
    assertThrows(UnsupportedOperationException.class, () -> s.layers().clear());
  }

  @Test
  void builderAndJsonRoundTrip() throws Exception {
    ModelSpec s = ModelSpec.builder().input(2, 3).flatten().linear(5, false).gelu().dropout(0.25f).linear(4)
        .build();
    String json = s.toJson();
    assertEquals("{\"input\":[2,3],\"layers\":[{\"type\":\"flatten\"},"
        + "{\"type\":\"linear\",\"units\":5,\"bias\":false},{\"type\":\"gelu\"},{\"type\":\"dropout\",\"p\":0.25},"
        + "{\"type\":\"linear\",\"units\":4,\"bias\":true}]}", json);
    ModelSpec back = ModelSpec.fromJson(json);
    assertEquals(s, back);
    assertEquals(s.hashCode(), back.hashCode());
    assertEquals(s.layers(), back.layers());
    assertEquals(json, back.toJson());

    // A hand-written spec: bias defaults to true; p as written survives a float round trip.
    ModelSpec hand = ModelSpec.fromJson("{\"input\": [784], \"layers\": [{\"type\": \"linear\", \"units\": 256},"
        + " {\"type\": \"relu\"}, {\"type\": \"dropout\", \"p\": 0.1}, {\"type\": \"linear\", \"units\": 10}]}");
    assertEquals(ModelSpec.builder().input(784).linear(256).relu().dropout(0.1f).linear(10).build(), hand);
    assertEquals(hand, ModelSpec.fromJson(hand.toJson()));
    assertNotEquals(hand, ModelSpec.builder().input(784).linear(256).relu().linear(10).build());

    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
      out.writeObject(s);
    }
    try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(bytes.toByteArray()))) {
      assertEquals(s, in.readObject(), "java serialization (Spark ships the spec in Params)");
    }
  }

  @Test
  void fromFile(@TempDir Path dir) throws Exception {
    ModelSpec s = ModelSpec.mlp(4, new int[] {3}, 2, "relu", 0f);
    Path f = dir.resolve("model.json");
    Files.writeString(f, s.toJson());
    assertEquals(s, ModelSpec.fromFile(f));
  }

  @Test
  void mlpBuilder() {
    ModelSpec s = ModelSpec.mlp(784, new int[] {256, 128}, 10, "gelu", 0.2f);
    assertEquals(ModelSpec.builder().input(784).linear(256).gelu().dropout(0.2f).linear(128).gelu().dropout(0.2f)
        .linear(10).build(), s);
    ModelSpec noDrop = ModelSpec.mlp(20, new int[] {8}, 3, "relu", 0f);
    assertEquals(ModelSpec.builder().input(20).linear(8).relu().linear(3).build(), noDrop);
    assertEquals(ModelSpec.builder().input(5).linear(2).build(), ModelSpec.mlp(5, new int[0], 2, "relu", 0.5f));

    ParameterSet ps;
    try (CpuDevice dev = new CpuDevice()) {
      Model m = new Model(s, dev);
      ps = m.parameters();
      assertEquals(784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10, ps.parameterCount());
      assertEquals(List.of("0.linear.weight", "0.linear.bias", "3.linear.weight", "3.linear.bias",
          "6.linear.weight", "6.linear.bias"), ps.entries().stream().map(ParameterSet.Entry::name).toList());
    }
    assertEquals("model spec: layer 1: unknown layer type 'tanh' (known: linear, relu, gelu, dropout, flatten, conv2d,"
        + " batchnorm2d, maxpool2d, avgpool2d, globalavgpool, residual)",
        error(() -> ModelSpec.mlp(4, new int[] {3}, 2, "tanh", 0f)));
  }

  // ---- errors, exact messages ----

  @Test
  void unknownLayerType() {
    assertEquals("model spec: layer 1: unknown layer type 'conv3d' (known: linear, relu, gelu, dropout, flatten,"
        + " conv2d, batchnorm2d, maxpool2d, avgpool2d, globalavgpool, residual)",
        error(() -> ModelSpec.builder().input(4).linear(3).layer(new ModelSpec.LayerSpec("conv3d", 3, true, 0f))
            .build()));
    assertEquals("model spec: layers[0]: unknown layer type 'conv3d' (known: linear, relu, gelu, dropout, flatten,"
        + " conv2d, batchnorm2d, maxpool2d, avgpool2d, globalavgpool, residual)",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"conv3d\"}]}"));
    assertEquals("model spec: layers[0]: expected an object with a string 'type'",
        jsonError("{\"input\": [4], \"layers\": [{\"units\": 3}]}"));
    assertEquals("model spec: layers[0]: expected an object with a string 'type'",
        jsonError("{\"input\": [4], \"layers\": [\"relu\"]}"));
  }

  @Test
  void linearWithoutUnits() {
    assertEquals("model spec: layers[1]: linear needs 'units'",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"relu\"}, {\"type\": \"linear\"}]}"));
  }

  @Test
  void unitsZero() {
    assertEquals("model spec: layer 0: linear: units must be > 0, got 0",
        error(() -> ModelSpec.builder().input(4).linear(0).build()));
    assertEquals("model spec: layer 0: linear: units must be > 0, got 0",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"linear\", \"units\": 0}]}"));
    assertEquals("model spec: layer 0: linear: units must be > 0, got -3",
        error(() -> ModelSpec.builder().input(4).linear(-3).build()));
    assertEquals("model spec: layers[0].units must be an integer, got 2.5",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"linear\", \"units\": 2.5}]}"));
    assertEquals("model spec: layers[0].bias must be true or false",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"linear\", \"units\": 2, \"bias\": 1}]}"));
  }

  @Test
  void dropoutPOne() {
    assertEquals("model spec: layer 1: dropout: p must be in [0, 1), got 1.0",
        error(() -> ModelSpec.builder().input(4).relu().dropout(1f).build()));
    assertEquals("model spec: layer 0: dropout: p must be in [0, 1), got 1.0",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"dropout\", \"p\": 1}]}"));
    assertEquals("model spec: layer 0: dropout: p must be in [0, 1), got -0.1",
        error(() -> ModelSpec.builder().input(4).dropout(-0.1f).build()));
    assertEquals("model spec: layer 0: dropout: p must be in [0, 1), got NaN",
        error(() -> ModelSpec.builder().input(4).dropout(Float.NaN).build()));
    assertEquals("model spec: layers[0]: dropout needs a number 'p' in [0, 1)",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"dropout\"}]}"));
    assertEquals("model spec: layers[0]: dropout needs a number 'p' in [0, 1)",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"dropout\", \"p\": \"0.5\"}]}"));
  }

  @Test
  void unknownKey() {
    assertEquals("model spec: unknown key 'output' (allowed: [input, layers])",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"relu\"}], \"output\": 3}"));
    assertEquals("model spec: layers[0]: unknown key 'unit' (allowed: [bias, type, units])",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"linear\", \"unit\": 3}]}"));
    assertEquals("model spec: layers[1]: unknown key 'p' (allowed: [type])",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"linear\", \"units\": 3},"
            + " {\"type\": \"relu\", \"p\": 0.5}]}"));
    assertEquals("model spec: layers[0]: unknown key 'rate' (allowed: [p, type])",
        jsonError("{\"input\": [4], \"layers\": [{\"type\": \"dropout\", \"rate\": 0.5}]}"));
  }

  @Test
  void nonIntegerInput() {
    assertEquals("model spec: input[1] must be an integer, got 28.5",
        jsonError("{\"input\": [1, 28.5], \"layers\": [{\"type\": \"flatten\"}]}"));
    assertEquals("model spec: input[0] must be an integer, got \"784\"",
        jsonError("{\"input\": [\"784\"], \"layers\": [{\"type\": \"relu\"}]}"));
    assertEquals("model spec: input[0] must be an integer, got 10000000000",
        jsonError("{\"input\": [10000000000], \"layers\": [{\"type\": \"relu\"}]}"));
    assertEquals("model spec: 'input' must be an array of dimensions, e.g. [784]",
        jsonError("{\"input\": 784, \"layers\": [{\"type\": \"relu\"}]}"));
    assertEquals("model spec: 'input' must list at least one dimension, e.g. [784]",
        jsonError("{\"input\": [], \"layers\": [{\"type\": \"relu\"}]}"));
    assertEquals("model spec: input dimensions must be > 0, got [4, 0]",
        error(() -> ModelSpec.builder().input(4, 0).flatten().build()));
    assertEquals("model spec: 'input' must list at least one dimension, e.g. [784]",
        error(() -> ModelSpec.builder().relu().build()));
  }

  @Test
  void emptyLayers() {
    assertEquals("model spec: 'layers' is empty; add at least one layer",
        jsonError("{\"input\": [4], \"layers\": []}"));
    assertEquals("model spec: 'layers' is empty; add at least one layer",
        error(() -> ModelSpec.builder().input(4).build()));
    assertEquals("model spec: 'layers' must be an array of layer objects", jsonError("{\"input\": [4]}"));
    assertEquals("model spec: expected a JSON object with 'input' and 'layers'", jsonError("[1]"));
    String notJson = jsonError("{\"input\": [4], ");
    assertTrue(notJson.startsWith("model spec: not valid JSON: "), notJson);
  }

  @Test
  void linearAfterTwoDimensionalInputNeedsFlatten() {
    assertEquals("model spec: layer 0 (linear): linear expects a flat input (features), got (28, 28);"
        + " put a flatten layer before it",
        error(() -> ModelSpec.builder().input(28, 28).linear(10).build()));
    assertEquals("model spec: layer 1 (linear): linear expects a flat input (features), got (2, 3);"
        + " put a flatten layer before it",
        jsonError("{\"input\": [2, 3], \"layers\": [{\"type\": \"relu\"}, {\"type\": \"linear\", \"units\": 4}]}"));
    // With flatten it builds.
    assertArrayEquals(new int[] {10}, ModelSpec.builder().input(28, 28).flatten().linear(10).build().outputShape());
  }
}
