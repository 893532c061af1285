package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.sparktrainer.engine.Conv2dDesc;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/** ModelSpec for the convolutional layers: JSON (defaults, round trips) and the exact error messages. */
class CnnModelSpecTest {

  private static String error(Executable e) {
    return assertThrows(IllegalArgumentException.class, e).getMessage();
  }

  private static String jsonError(String json) {
    return error(() -> ModelSpec.fromJson(json));
  }

  /** A spec with the given layers JSON and input [3, 8, 8]. */
  private static String spec(String layers) {
    return "{\"input\": [3, 8, 8], \"layers\": [" + layers + "]}";
  }

  @Test
  void handWrittenBlockWithDefaults() {
    ModelSpec s = ModelSpec.fromJson(spec("{\"type\": \"conv2d\", \"filters\": 4, \"kernel\": 3, \"padding\": 1},"
        + "{\"type\": \"batchnorm2d\"}, {\"type\": \"relu\"}, {\"type\": \"maxpool2d\", \"kernel\": 2},"
        + "{\"type\": \"residual\", \"layers\": [{\"type\": \"conv2d\", \"filters\": 4, \"kernel\": [3, 1],"
        + " \"padding\": [1, 0], \"bias\": false, \"init\": \"kaiming_normal\"}]},"
        + "{\"type\": \"avgpool2d\", \"kernel\": 2, \"stride\": 1}, {\"type\": \"globalavgpool\"},"
        + "{\"type\": \"flatten\"}, {\"type\": \"linear\", \"units\": 10}"));
    assertArrayEquals(new int[] {10}, s.outputShape());
    ModelSpec.LayerSpec conv = s.layers().get(0);
    assertEquals(new ModelSpec.Conv(4, 3, 3, 1, 1, 1, 1, 1, 1, 1, Conv2d.Init.UNIFORM), conv.conv());
    assertEquals(true, conv.bias());
    assertEquals(ModelSpec.Norm.DEFAULT, s.layers().get(1).norm());
    assertEquals(new ModelSpec.Pool(2, 2, 2, 2, 0, 0), s.layers().get(3).pool(), "stride defaults to the kernel");
    ModelSpec.LayerSpec res = s.layers().get(4);
    assertEquals(List.of(), res.shortcut(), "absent shortcut: identity");
    assertEquals(new ModelSpec.Conv(4, 3, 1, 1, 1, 1, 0, 1, 1, 1, Conv2d.Init.KAIMING_NORMAL),
        res.layers().get(0).conv());
    assertEquals(new ModelSpec.Pool(2, 2, 1, 1, 0, 0), s.layers().get(5).pool());

    List<Layer> layers = s.newLayers();
    assertInstanceOf(Conv2d.class, layers.get(0));
    assertEquals(Conv2dDesc.of(1, 1), ((Conv2d) layers.get(0)).desc());
    assertInstanceOf(BatchNorm2d.class, layers.get(1));
    assertEquals(0.1f, ((BatchNorm2d) layers.get(1)).momentum());
    assertInstanceOf(MaxPool2d.class, layers.get(3));
    Residual r = (Residual) layers.get(4);
    assertNull(r.shortcut());
    assertInstanceOf(AvgPool2d.class, layers.get(5));
    assertInstanceOf(GlobalAvgPool.class, layers.get(6));

    // The canonical JSON writes every field; equal specs give equal JSON.
    assertEquals("{\"type\":\"conv2d\",\"filters\":4,\"kernel\":3,\"stride\":1,\"padding\":1,\"dilation\":1,"
        + "\"groups\":1,\"bias\":true,\"init\":\"uniform\"}", s.toJsonNode().get("layers").get(0).toString());
    assertEquals("{\"type\":\"batchnorm2d\",\"momentum\":0.1,\"eps\":1.0E-5}",
        s.toJsonNode().get("layers").get(1).toString());
    assertEquals("{\"type\":\"residual\",\"layers\":[{\"type\":\"conv2d\",\"filters\":4,\"kernel\":[3,1],"
        + "\"stride\":1,\"padding\":[1,0],\"dilation\":1,\"groups\":1,\"bias\":false,\"init\":\"kaiming_normal\"}],"
        + "\"shortcut\":[]}", s.toJsonNode().get("layers").get(4).toString());
    assertEquals(s, ModelSpec.fromJson(s.toJson()));
    assertEquals(s.toJson(), ModelSpec.fromJson(s.toJson()).toJson());
  }

  @Test
  void builderMatchesJsonAndRoundTrips() throws Exception {
    ModelSpec built = ModelSpec.builder().input(3, 8, 8)
        .conv2d(ModelSpec.Conv.of(6, 3, 2, 1).withGroups(3).withDilation(2), false).batchNorm2d(0.05f, 1e-3f)
        .relu().residual(ModelSpec.builder().conv2d(6, 3, 1, 1).layerList(),
            ModelSpec.builder().avgPool2d(1, 1, 0).layerList())
        .globalAvgPool().flatten().linear(2).build();
    ModelSpec parsed = ModelSpec.fromJson(spec("{\"type\": \"conv2d\", \"filters\": 6, \"kernel\": 3, \"stride\": 2,"
        + " \"padding\": 1, \"dilation\": 2, \"groups\": 3, \"bias\": false},"
        + "{\"type\": \"batchnorm2d\", \"momentum\": 0.05, \"eps\": 0.001}, {\"type\": \"relu\"},"
        + "{\"type\": \"residual\", \"layers\": [{\"type\": \"conv2d\", \"filters\": 6, \"kernel\": 3,"
        + " \"padding\": 1}], \"shortcut\": [{\"type\": \"avgpool2d\", \"kernel\": 1}]},"
        + "{\"type\": \"globalavgpool\"}, {\"type\": \"flatten\"}, {\"type\": \"linear\", \"units\": 2}"));
    assertEquals(built, parsed);
    assertEquals(built.layers(), parsed.layers());
    assertArrayEquals(new int[] {6, 3, 3}, ModelSpec.builder().input(3, 8, 8)
        .conv2d(ModelSpec.Conv.of(6, 3, 2, 1).withGroups(3).withDilation(2), false).build().outputShape());

    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
      out.writeObject(built);
    }
    try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(bytes.toByteArray()))) {
      assertEquals(built, in.readObject(), "java serialization (Spark ships the spec in Params)");
    }
    // The four-field LayerSpec of the first layer types is unchanged.
    assertEquals(new ModelSpec.LayerSpec("relu", 0, false, 0f), built.layers().get(2));
  }

  @Test
  void zooSpecsRoundTripThroughJson() {
    for (ModelSpec s : List.of(ModelZoo.fashionMnistCnn(), ModelZoo.resnet18(1000), ModelZoo.resnet50(10, 3, 64,
        64))) {
      assertEquals(s, ModelSpec.fromJson(s.toJson()));
    }
  }

  @Test
  void zooModelsByName() {
    assertEquals(ModelZoo.resnet50(1000), ModelSpec.fromJson("{\"zoo\": \"resnet50\"}"));
    assertEquals(ModelZoo.resnet18(10, 3, 32, 32),
        ModelSpec.fromJson("{\"zoo\": \"resnet18\", \"classes\": 10, \"input\": [3, 32, 32]}"));
    assertEquals(ModelZoo.fashionMnistCnn(), ModelSpec.fromJson("{\"zoo\": \"fashion_mnist_cnn\"}"));
    assertEquals("model spec: unknown zoo model \"vgg16\" (known: fashion_mnist_cnn, resnet18, resnet50)",
        jsonError("{\"zoo\": \"vgg16\"}"));
    assertEquals("model spec: unknown key 'layers' (allowed: [classes, input, syncBatchNorm, zoo])",
        jsonError("{\"zoo\": \"resnet18\", \"layers\": []}"));
    assertEquals("model spec: classes must be an integer, got \"10\"",
        jsonError("{\"zoo\": \"resnet18\", \"classes\": \"10\"}"));
    assertEquals("model spec: zoo model 'fashion_mnist_cnn' has input [1, 28, 28] and 10 classes; write its layers"
        + " out to change them", jsonError("{\"zoo\": \"fashion_mnist_cnn\", \"classes\": 5}"));
    assertEquals("model spec: layer 0 (conv2d): conv2d expects (channels, height, width), got (784); give the model"
        + " input as [C, H, W]", jsonError("{\"zoo\": \"resnet18\", \"input\": [784]}"));
  }

  @Test
  void theCnnJobFileInConfHoldsTheZooCnn() throws Exception {
    java.nio.file.Path file = java.nio.file.Path.of("..", "conf", "fashion-mnist-cnn.json");
    com.fasterxml.jackson.databind.JsonNode root = new com.fasterxml.jackson.databind.ObjectMapper()
        .readTree(file.toFile());
    assertEquals(ModelZoo.fashionMnistCnn(), ModelSpec.fromJsonNode(root.get("model")));
    dev.sparktrainer.cli.JobConfig job = dev.sparktrainer.cli.JobConfig.load(file);
    assertEquals(ModelZoo.fashionMnistCnn(), job.trainer.getModelSpec());
  }

  // ---- errors, exact messages ----

  @Test
  void conv2dErrors() {
    assertEquals("model spec: layers[0]: conv2d needs 'filters' (output channels)",
        jsonError(spec("{\"type\": \"conv2d\", \"kernel\": 3}")));
    assertEquals("model spec: layers[0]: conv2d needs 'kernel', e.g. 3 or [3, 3]",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 3}")));
    assertEquals("model spec: layers[0].kernel must be an integer or [height, width], got 2.5",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 3, \"kernel\": 2.5}")));
    assertEquals("model spec: layers[0].stride must be an integer or [height, width], got [1,1,1]",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 3, \"kernel\": 3, \"stride\": [1, 1, 1]}")));
    assertEquals("model spec: layers[0].filters must be an integer, got \"8\"",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": \"8\", \"kernel\": 3}")));
    assertEquals("model spec: layer 0: conv2d: filters must be > 0, got 0",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 0, \"kernel\": 3}")));
    assertEquals("model spec: layer 0: conv2d: kernel must be > 0, got 0x3",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 2, \"kernel\": [0, 3]}")));
    assertEquals("model spec: layer 0: conv2d: stride must be > 0, got 0x0",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 2, \"kernel\": 3, \"stride\": 0}")));
    assertEquals("model spec: layer 0: conv2d: padding must be >= 0, got -1x-1",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 2, \"kernel\": 3, \"padding\": -1}")));
    assertEquals("model spec: layer 0: conv2d: dilation must be > 0, got 1x0",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 2, \"kernel\": 3, \"dilation\": [1, 0]}")));
    assertEquals("model spec: layer 0: conv2d: groups must be > 0, got 0",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 2, \"kernel\": 3, \"groups\": 0}")));
    assertEquals("model spec: layer 0: conv2d: filters (3) must be divisible by groups (2)",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 3, \"kernel\": 3, \"groups\": 2}")));
    assertEquals("model spec: layer 0 (conv2d): conv2d: input channels (3) must be divisible by groups (2)",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 4, \"kernel\": 3, \"groups\": 2}")));
    assertEquals("model spec: layer 0 (conv2d): conv2d: kernel 9x9 (dilation 1x1) does not fit the input 8x8 with"
        + " padding 0x0", jsonError(spec("{\"type\": \"conv2d\", \"filters\": 4, \"kernel\": 9}")));
    assertEquals("model spec: layer 0 (conv2d): conv2d expects (channels, height, width), got (784); give the model"
        + " input as [C, H, W]",
        jsonError("{\"input\": [784], \"layers\": [{\"type\": \"conv2d\", \"filters\": 4, \"kernel\": 3}]}"));
    assertEquals("model spec: layers[0].init must be \"uniform\" or \"kaiming_normal\", got \"xavier\"",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 4, \"kernel\": 3, \"init\": \"xavier\"}")));
    assertEquals("model spec: layers[0].bias must be true or false",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 4, \"kernel\": 3, \"bias\": 0}")));
    assertEquals("model spec: layers[0]: unknown key 'kernel_size' (allowed: [bias, dilation, filters, groups, init,"
        + " kernel, padding, stride, type])",
        jsonError(spec("{\"type\": \"conv2d\", \"filters\": 4, \"kernel_size\": 3}")));
    assertEquals("model spec: layer 0 (linear): linear expects a flat input (features), got (3, 8, 8); put a flatten"
        + " layer before it", jsonError(spec("{\"type\": \"linear\", \"units\": 4}")));
  }

  @Test
  void batchNormErrors() {
    assertEquals("model spec: layers[0].momentum must be a number, got \"0.1\"",
        jsonError(spec("{\"type\": \"batchnorm2d\", \"momentum\": \"0.1\"}")));
    assertEquals("model spec: layer 0: batchnorm2d: momentum must be in [0, 1], got 2.0",
        jsonError(spec("{\"type\": \"batchnorm2d\", \"momentum\": 2}")));
    assertEquals("model spec: layer 0: batchnorm2d: eps must be > 0, got -1.0",
        jsonError(spec("{\"type\": \"batchnorm2d\", \"eps\": -1}")));
    assertEquals("model spec: layers[0]: unknown key 'affine' (allowed: [eps, momentum, sync, type])",
        jsonError(spec("{\"type\": \"batchnorm2d\", \"affine\": false}")));
    assertEquals("model spec: layer 0 (batchnorm2d): batchnorm2d expects (channels, height, width) or (channels),"
        + " got (3, 8)", error(() -> ModelSpec.builder().input(3, 8).batchNorm2d().build()));
  }

  @Test
  void poolErrors() {
    assertEquals("model spec: layers[0]: maxpool2d needs 'kernel', e.g. 2 or [2, 2]",
        jsonError(spec("{\"type\": \"maxpool2d\", \"stride\": 2}")));
    assertEquals("model spec: layer 0: maxpool2d: padding must be between 0 and half the kernel, got 2x2 for kernel"
        + " 2x2", jsonError(spec("{\"type\": \"maxpool2d\", \"kernel\": 2, \"padding\": 2}")));
    assertEquals("model spec: layer 0: avgpool2d: stride must be > 0, got 0x0",
        jsonError(spec("{\"type\": \"avgpool2d\", \"kernel\": 2, \"stride\": 0}")));
    assertEquals("model spec: layer 1 (avgpool2d): avgpool2d: window 3x3 does not fit the input 2x2 with padding"
        + " 0x0", jsonError(spec("{\"type\": \"maxpool2d\", \"kernel\": 4}, {\"type\": \"avgpool2d\", \"kernel\": 3}")));
    assertEquals("model spec: layers[0]: unknown key 'size' (allowed: [kernel, padding, stride, type])",
        jsonError(spec("{\"type\": \"avgpool2d\", \"size\": 2}")));
    assertEquals("model spec: layers[0]: unknown key 'kernel' (allowed: [type])",
        jsonError(spec("{\"type\": \"globalavgpool\", \"kernel\": 2}")));
  }

  @Test
  void residualErrors() {
    assertEquals("model spec: layers[0]: residual needs 'layers', an array of layer objects (the main path)",
        jsonError(spec("{\"type\": \"residual\"}")));
    assertEquals("model spec: layers[0].shortcut must be an array of layer objects ([] or absent: identity)",
        jsonError(spec("{\"type\": \"residual\", \"layers\": [{\"type\": \"relu\"}], \"shortcut\": {}}")));
    assertEquals("model spec: layers[0].layers[1]: conv2d needs 'filters' (output channels)",
        jsonError(spec("{\"type\": \"residual\", \"layers\": [{\"type\": \"relu\"}, {\"type\": \"conv2d\"}]}")));
    assertEquals("model spec: layers[0].shortcut[0]: unknown layer type 'conv' (known: linear, relu, gelu, dropout,"
        + " flatten, conv2d, batchnorm2d, maxpool2d, avgpool2d, globalavgpool, residual)",
        jsonError(spec("{\"type\": \"residual\", \"layers\": [{\"type\": \"relu\"}], \"shortcut\": [{\"type\":"
            + " \"conv\"}]}")));
    assertEquals("model spec: layer 0: residual: main path layer 0: conv2d: filters must be > 0, got -1",
        jsonError(spec("{\"type\": \"residual\", \"layers\": [{\"type\": \"conv2d\", \"filters\": -1, \"kernel\":"
            + " 1}]}")));
    assertEquals("model spec: layer 0: residual: 'layers' (the main path) is empty; add at least one layer",
        jsonError(spec("{\"type\": \"residual\", \"layers\": []}")));
    assertEquals("model spec: layer 0 (residual): residual: the main path gives (4, 8, 8) but the identity shortcut"
        + " gives (3, 8, 8); the shapes must match (add a shortcut, e.g. conv2d 1x1 with the main path's stride and"
        + " filters)", jsonError(spec("{\"type\": \"residual\", \"layers\": [{\"type\": \"conv2d\", \"filters\": 4,"
            + " \"kernel\": 3, \"padding\": 1}]}")));
    assertEquals("model spec: layer 0 (residual): residual: the main path gives (3, 4, 4) but the shortcut gives"
        + " (3, 8, 8); the shapes must match (add a shortcut, e.g. conv2d 1x1 with the main path's stride and"
        + " filters)", jsonError(spec("{\"type\": \"residual\", \"layers\": [{\"type\": \"maxpool2d\", \"kernel\":"
            + " 2}], \"shortcut\": [{\"type\": \"relu\"}]}")));
    assertEquals("model spec: layer 0 (residual): shortcut layer 0: linear expects a flat input (features), got"
        + " (3, 8, 8); put a flatten layer before it", jsonError(spec("{\"type\": \"residual\", \"layers\":"
            + " [{\"type\": \"relu\"}], \"shortcut\": [{\"type\": \"linear\", \"units\": 2}]}")));
  }

  @Test
  void builderLayerSpecWithoutGeometry() {
    assertEquals("model spec: layer 0: conv2d needs a Conv (filters, kernel, ...)",
        error(() -> ModelSpec.builder().input(1, 4, 4).layer(new ModelSpec.LayerSpec("conv2d", 3, true, 0f))
            .build()));
    assertEquals("model spec: layer 0: maxpool2d needs a Pool (kernel, stride, padding)",
        error(() -> ModelSpec.builder().input(1, 4, 4).layer(new ModelSpec.LayerSpec("maxpool2d", 0, false, 0f))
            .build()));
  }
}
