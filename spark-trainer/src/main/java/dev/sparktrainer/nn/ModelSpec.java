package dev.sparktrainer.nn;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.engine.Conv2dDesc;
import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Shape;
import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;

/**
 * An immutable description of a model: the per-sample input shape and a sequence of layers. Built in Java
 * with {@link #builder()} or {@link #mlp}, or read from JSON, e.g.
 *
 * <pre>{"input": [784], "layers": [{"type": "linear", "units": 256}, {"type": "relu"},
 *   {"type": "dropout", "p": 0.1}, {"type": "linear", "units": 10}]}</pre>
 *
 * Layer types: linear (units, bias = true), relu, gelu, dropout (p), flatten, and for images (input
 * [C, H, W], channels first): conv2d (filters, kernel, stride = 1, padding = 0, dilation = 1, groups = 1,
 * bias = true, init = "uniform" | "kaiming_normal"), batchnorm2d (momentum = 0.1, eps = 1e-5, sync = false:
 * true synchronises the training statistics across ranks as torch.nn.SyncBatchNorm, see Note [synchronised
 * batch norm] in {@link BatchNorm2d}; {@link #withSyncBatchNorm()} turns it on for every one), maxpool2d and
 * avgpool2d (kernel, stride = kernel, padding = 0), globalavgpool, and residual (layers: the main path,
 * shortcut: its layers, identity when absent or empty; the two are added). kernel, stride, padding and
 * dilation are an integer or [height, width]. E.g. a ResNet basic block:
 *
 * <pre>{"type": "residual", "layers": [
 *     {"type": "conv2d", "filters": 64, "kernel": 3, "padding": 1, "bias": false}, {"type": "batchnorm2d"},
 *     {"type": "relu"},
 *     {"type": "conv2d", "filters": 64, "kernel": 3, "padding": 1, "bias": false}, {"type": "batchnorm2d"}]},
 * {"type": "relu"}</pre>
 *
 * Validation happens when the spec is built or parsed, with a message naming the bad field. Ready-made
 * specs: {@link ModelZoo}, also by name in JSON: {@code {"zoo": "resnet50", "classes": 1000}} (add
 * {@code "syncBatchNorm": true} for synchronised batch norm in every layer).
 */
public final class ModelSpec implements Serializable {
  private static final long serialVersionUID = 1L;
  private static final ObjectMapper JSON = new ObjectMapper();

  /** The layer types, in the order error messages list them. */
  static final String KNOWN_TYPES = "linear, relu, gelu, dropout, flatten, conv2d, batchnorm2d, maxpool2d, "
      + "avgpool2d, globalavgpool, residual";

  /**
   * One layer: its type and parameters: units (linear), bias (linear, conv2d), p (dropout), conv (conv2d),
   * pool (maxpool2d, avgpool2d), norm (batchnorm2d), layers and shortcut (residual). Fields a type does not use
   * are 0, false, null or empty.
   */
  public record LayerSpec(String type, int units, boolean bias, float p, Conv conv, Pool pool, Norm norm,
      List<LayerSpec> layers, List<LayerSpec> shortcut) implements Serializable {
    /** Copies the lists (null means empty). */
    public LayerSpec {
      layers = layers == null ? List.of() : List.copyOf(layers);
      shortcut = shortcut == null ? List.of() : List.copyOf(shortcut);
    }

    /** A layer of the first five types (linear, relu, gelu, dropout, flatten). */
    public LayerSpec(String type, int units, boolean bias, float p) {
      this(type, units, bias, p, null, null, null, null, null);
    }
  }

  /** conv2d's geometry; {@link #of} gives PyTorch's defaults for the rest. */
  public record Conv(int filters, int kernelH, int kernelW, int strideH, int strideW, int padH, int padW,
      int dilationH, int dilationW, int groups, Conv2d.Init init) implements Serializable {
    /** Square kernel, stride and padding; dilation 1, one group, PyTorch's default init. */
    public static Conv of(int filters, int kernel, int stride, int padding) {
      return new Conv(filters, kernel, kernel, stride, stride, padding, padding, 1, 1, 1, Conv2d.Init.UNIFORM);
    }

    public Conv withDilation(int dilation) {
      return new Conv(filters, kernelH, kernelW, strideH, strideW, padH, padW, dilation, dilation, groups, init);
    }

    public Conv withGroups(int g) {
      return new Conv(filters, kernelH, kernelW, strideH, strideW, padH, padW, dilationH, dilationW, g, init);
    }

    public Conv withInit(Conv2d.Init i) {
      return new Conv(filters, kernelH, kernelW, strideH, strideW, padH, padW, dilationH, dilationW, groups, i);
    }

    Conv2dDesc desc() {
      return new Conv2dDesc(strideH, strideW, padH, padW, dilationH, dilationW, groups);
    }
  }

  /** maxpool2d / avgpool2d window. */
  public record Pool(int kernelH, int kernelW, int strideH, int strideW, int padH, int padW)
      implements Serializable {
    public static Pool of(int kernel, int stride, int padding) {
      return new Pool(kernel, kernel, stride, stride, padding, padding);
    }

    Pool2dDesc desc() {
      return new Pool2dDesc(kernelH, kernelW, strideH, strideW, padH, padW);
    }
  }

  /**
   * batchnorm2d settings (PyTorch's defaults: momentum 0.1, eps 1e-5); {@code sync}: statistics over all ranks'
   * batches (Note [synchronised batch norm] in {@link BatchNorm2d}), default false (per rank).
   */
  public record Norm(float momentum, float eps, boolean sync) implements Serializable {
    public static final Norm DEFAULT = new Norm(0.1f, 1e-5f);

    /** Per-rank statistics. */
    public Norm(float momentum, float eps) {
      this(momentum, eps, false);
    }

    public Norm withSync(boolean s) {
      return new Norm(momentum, eps, s);
    }
  }

  private final int[] input;
  private final List<LayerSpec> layers;

  private ModelSpec(int[] input, List<LayerSpec> layers) {
    this.input = input.clone();
    this.layers = List.copyOf(layers);
    validate();
  }

  private void validate() {
    if (input.length == 0) {
      throw new IllegalArgumentException("model spec: 'input' must list at least one dimension, e.g. [784]");
    }
    for (int d : input) {
      if (d <= 0) {
        throw new IllegalArgumentException("model spec: input dimensions must be > 0, got " + Arrays.toString(input));
      }
    }
    if (layers.isEmpty()) {
      throw new IllegalArgumentException("model spec: 'layers' is empty; add at least one layer");
    }
    // Shape inference runs every layer's check.
    outputShape();
  }

  public static Builder builder() {
    return new Builder();
  }

  /** A multi-layer perceptron: linear+activation per hidden size, optional dropout after each, linear out. */
  public static ModelSpec mlp(int inputs, int[] hidden, int outputs, String activation, float dropout) {
    Builder b = builder().input(inputs);
    for (int h : hidden) {
      b.linear(h);
      b.layer(new LayerSpec(activation, 0, false, 0f));
      if (dropout > 0f) {
        b.dropout(dropout);
      }
    }
    return b.linear(outputs).build();
  }

  /** Builder: {@code ModelSpec.builder().input(784).linear(256).relu().linear(10).build()}. */
  public static final class Builder {
    private int[] input = new int[0];
    private final List<LayerSpec> layers = new ArrayList<>();

    public Builder input(int... shape) {
      this.input = shape.clone();
      return this;
    }

    public Builder linear(int units) {
      return linear(units, true);
    }

    public Builder linear(int units, boolean bias) {
      return layer(new LayerSpec("linear", units, bias, 0f));
    }

    public Builder relu() {
      return layer(new LayerSpec("relu", 0, false, 0f));
    }

    public Builder gelu() {
      return layer(new LayerSpec("gelu", 0, false, 0f));
    }

    public Builder dropout(float p) {
      return layer(new LayerSpec("dropout", 0, false, p));
    }

    public Builder flatten() {
      return layer(new LayerSpec("flatten", 0, false, 0f));
    }

    /** conv2d with a square kernel, stride and padding, bias, PyTorch's default init. */
    public Builder conv2d(int filters, int kernel, int stride, int padding) {
      return conv2d(Conv.of(filters, kernel, stride, padding), true);
    }

    public Builder conv2d(Conv conv, boolean bias) {
      return layer(new LayerSpec("conv2d", 0, bias, 0f, conv, null, null, null, null));
    }

    /** batchnorm2d with momentum 0.1 and eps 1e-5. */
    public Builder batchNorm2d() {
      return batchNorm2d(Norm.DEFAULT.momentum(), Norm.DEFAULT.eps());
    }

    public Builder batchNorm2d(float momentum, float eps) {
      return batchNorm2d(new Norm(momentum, eps));
    }

    /** batchnorm2d with these settings (e.g. {@code Norm.DEFAULT.withSync(true)}: synchronised batch norm). */
    public Builder batchNorm2d(Norm norm) {
      return layer(new LayerSpec("batchnorm2d", 0, false, 0f, null, null, norm, null, null));
    }

    public Builder maxPool2d(int kernel, int stride, int padding) {
      return layer(new LayerSpec("maxpool2d", 0, false, 0f, null, Pool.of(kernel, stride, padding), null, null,
          null));
    }

    public Builder avgPool2d(int kernel, int stride, int padding) {
      return layer(new LayerSpec("avgpool2d", 0, false, 0f, null, Pool.of(kernel, stride, padding), null, null,
          null));
    }

    public Builder globalAvgPool() {
      return layer(new LayerSpec("globalavgpool", 0, false, 0f));
    }

    /** main(x) + shortcut(x); an empty shortcut is the identity. Build the lists with {@link #layerList()}. */
    public Builder residual(List<LayerSpec> main, List<LayerSpec> shortcut) {
      return layer(new LayerSpec("residual", 0, false, 0f, null, null, null, main, shortcut));
    }

    /** The layers added so far (for the paths of a residual block: {@code builder().conv2d(...)...layerList()}). */
    public List<LayerSpec> layerList() {
      return List.copyOf(layers);
    }

    public Builder layer(LayerSpec spec) {
      layers.add(spec);
      return this;
    }

    /** Validates and builds; the message says which layer or field to fix. */
    public ModelSpec build() {
      return new ModelSpec(input, layers);
    }
  }

  public int[] input() {
    return input.clone();
  }

  public List<LayerSpec> layers() {
    return layers;
  }

  /** Per-sample input size (product of the input shape). */
  public int inputSize() {
    return Math.toIntExact(Shape.numel(input));
  }

  /** Per-sample output shape. */
  public int[] outputShape() {
    int[] s = input;
    List<Layer> built = newLayers();
    for (int k = 0; k < built.size(); k++) {
      try {
        s = built.get(k).outputShape(s);
      } catch (IllegalArgumentException e) {
        throw new IllegalArgumentException("model spec: layer " + k + " (" + layers.get(k).type() + "): "
            + e.getMessage(), e);
      }
    }
    return s;
  }

  /** Per-sample output size, e.g. the number of classes. */
  public int outputSize() {
    return Math.toIntExact(Shape.numel(outputShape()));
  }

  /**
   * This spec with every batchnorm2d layer (inside residual blocks too) synchronised across ranks, as
   * torch.nn.SyncBatchNorm.convert_sync_batchnorm (Note [synchronised batch norm] in {@link BatchNorm2d}).
   * Same layers, parameters and names; only the training statistics change.
   */
  public ModelSpec withSyncBatchNorm() {
    return new ModelSpec(input, syncNorms(layers));
  }

  private static List<LayerSpec> syncNorms(List<LayerSpec> in) {
    List<LayerSpec> out = new ArrayList<>();
    for (LayerSpec l : in) {
      if ("batchnorm2d".equals(l.type())) {
        Norm n = l.norm() == null ? Norm.DEFAULT : l.norm();
        out.add(new LayerSpec(l.type(), l.units(), l.bias(), l.p(), l.conv(), l.pool(), n.withSync(true), l.layers(),
            l.shortcut()));
      } else if ("residual".equals(l.type())) {
        out.add(new LayerSpec(l.type(), l.units(), l.bias(), l.p(), l.conv(), l.pool(), l.norm(), syncNorms(l.layers()),
            syncNorms(l.shortcut())));
      } else {
        out.add(l);
      }
    }
    return out;
  }

  /** Fresh, unbound layer objects for this spec. */
  public List<Layer> newLayers() {
    List<Layer> out = new ArrayList<>();
    for (int k = 0; k < layers.size(); k++) {
      try {
        out.add(newLayer(layers.get(k)));
      } catch (IllegalArgumentException e) {
        throw new IllegalArgumentException("model spec: layer " + k + ": " + e.getMessage(), e);
      }
    }
    return out;
  }

  private static Layer newLayer(LayerSpec l) {
    String type = l.type() == null ? "" : l.type();
    return switch (type) {
      case "linear" -> new Linear(l.units(), l.bias());
      case "relu" -> new Activation(Activation.Kind.RELU);
      case "gelu" -> new Activation(Activation.Kind.GELU);
      case "dropout" -> new Dropout(l.p());
      case "flatten" -> new Flatten();
      case "conv2d" -> {
        Conv c = require(l.conv(), type, "a Conv (filters, kernel, ...)");
        yield new Conv2d(c.filters(), new int[] {c.kernelH(), c.kernelW()}, c.desc(), l.bias(),
            c.init() == null ? Conv2d.Init.UNIFORM : c.init());
      }
      case "batchnorm2d" -> {
        Norm n = l.norm() == null ? Norm.DEFAULT : l.norm();
        yield new BatchNorm2d(n.momentum(), n.eps(), n.sync());
      }
      case "maxpool2d", "avgpool2d" -> {
        Pool pool = require(l.pool(), type, "a Pool (kernel, stride, padding)");
        Pool2dDesc d;
        try {
          d = pool.desc();
        } catch (IllegalArgumentException e) {
          throw new IllegalArgumentException(type + ": " + e.getMessage(), e);
        }
        yield type.equals("maxpool2d") ? new MaxPool2d(d) : new AvgPool2d(d);
      }
      case "globalavgpool" -> new GlobalAvgPool();
      case "residual" -> new Residual(newPath(l.layers(), "residual: main path"),
          newPath(l.shortcut(), "residual: shortcut"));
      default -> throw new IllegalArgumentException("unknown layer type '" + type + "' (known: " + KNOWN_TYPES
          + ")");
    };
  }

  private static List<Layer> newPath(List<LayerSpec> specs, String where) {
    List<Layer> out = new ArrayList<>();
    for (int k = 0; k < specs.size(); k++) {
      try {
        out.add(newLayer(specs.get(k)));
      } catch (IllegalArgumentException e) {
        throw new IllegalArgumentException(where + " layer " + k + ": " + e.getMessage(), e);
      }
    }
    return out;
  }

  private static <T> T require(T value, String type, String what) {
    if (value == null) {
      throw new IllegalArgumentException(type + " needs " + what);
    }
    return value;
  }

  // ---- JSON ----

  /** The spec as a JSON tree (the form stored in checkpoints and Params). */
  public ObjectNode toJsonNode() {
    ObjectNode root = JSON.createObjectNode();
    ArrayNode in = root.putArray("input");
    for (int d : input) {
      in.add(d);
    }
    writeLayers(root.putArray("layers"), layers);
    return root;
  }

  private static void writeLayers(ArrayNode arr, List<LayerSpec> layers) {
    for (LayerSpec l : layers) {
      ObjectNode o = arr.addObject();
      o.put("type", l.type());
      switch (l.type()) {
        case "linear" -> {
          o.put("units", l.units());
          o.put("bias", l.bias());
        }
        case "dropout" -> o.put("p", l.p());
        case "conv2d" -> {
          Conv c = l.conv();
          o.put("filters", c.filters());
          putPair(o, "kernel", c.kernelH(), c.kernelW());
          putPair(o, "stride", c.strideH(), c.strideW());
          putPair(o, "padding", c.padH(), c.padW());
          putPair(o, "dilation", c.dilationH(), c.dilationW());
          o.put("groups", c.groups());
          o.put("bias", l.bias());
          o.put("init", (c.init() == null ? Conv2d.Init.UNIFORM : c.init()).wireName());
        }
        case "batchnorm2d" -> {
          Norm n = l.norm() == null ? Norm.DEFAULT : l.norm();
          o.put("momentum", n.momentum());
          o.put("eps", n.eps());
          if (n.sync()) {
            o.put("sync", true); // written only when on: per-rank specs keep their JSON (and equality)
          }
        }
        case "maxpool2d", "avgpool2d" -> {
          Pool p = l.pool();
          putPair(o, "kernel", p.kernelH(), p.kernelW());
          putPair(o, "stride", p.strideH(), p.strideW());
          putPair(o, "padding", p.padH(), p.padW());
        }
        case "residual" -> {
          writeLayers(o.putArray("layers"), l.layers());
          writeLayers(o.putArray("shortcut"), l.shortcut());
        }
        default -> { }
      }
    }
  }

  /** An integer when h == w, else [h, w]. */
  private static void putPair(ObjectNode o, String key, int h, int w) {
    if (h == w) {
      o.put(key, h);
    } else {
      o.putArray(key).add(h).add(w);
    }
  }

  public String toJson() {
    return toJsonNode().toString();
  }

  /** Parses and validates a JSON spec; unknown keys and wrong types are errors that name the field. */
  public static ModelSpec fromJson(String json) {
    JsonNode root;
    try {
      root = JSON.readTree(json);
    } catch (IOException e) {
      throw new IllegalArgumentException("model spec: not valid JSON: " + e.getMessage(), e);
    }
    return fromJsonNode(root);
  }

  /** Reads a spec from a JSON file. */
  public static ModelSpec fromFile(Path path) throws IOException {
    return fromJson(Files.readString(path, StandardCharsets.UTF_8));
  }

  public static ModelSpec fromJsonNode(JsonNode root) {
    if (root == null || !root.isObject()) {
      throw new IllegalArgumentException("model spec: expected a JSON object with 'input' and 'layers'");
    }
    if (root.has("zoo")) {
      return fromZoo(root);
    }
    checkKeys(root, Set.of("input", "layers"), "model spec");
    JsonNode in = root.get("input");
    if (in == null || !in.isArray()) {
      throw new IllegalArgumentException("model spec: 'input' must be an array of dimensions, e.g. [784]");
    }
    int[] input = new int[in.size()];
    for (int k = 0; k < input.length; k++) {
      input[k] = intField(in.get(k), "model spec: input[" + k + "]");
    }
    JsonNode ls = root.get("layers");
    if (ls == null || !ls.isArray()) {
      throw new IllegalArgumentException("model spec: 'layers' must be an array of layer objects");
    }
    Builder b = builder().input(input);
    for (LayerSpec l : parseLayers(ls, "model spec: layers")) {
      b.layer(l);
    }
    return b.build();
  }

  /**
   * A ready-made model by name, {@code {"zoo": "resnet50", "classes": 1000, "input": [3, 224, 224]}} (classes
   * and input optional; defaults 10 and [1, 28, 28] for fashion_mnist_cnn, 1000 and [3, 224, 224] for the
   * ResNets; {@code "syncBatchNorm": true}: {@link #withSyncBatchNorm()}). The spec is the expanded one (its JSON
   * lists every layer).
   */
  private static ModelSpec fromZoo(JsonNode root) {
    checkKeys(root, Set.of("zoo", "classes", "input", "syncBatchNorm"), "model spec");
    boolean syncBn = boolField(root, "syncBatchNorm", false, "model spec");
    JsonNode z = root.get("zoo");
    String name = z.isTextual() ? z.asText() : String.valueOf(z);
    int classes = root.has("classes") ? intField(root.get("classes"), "model spec: classes") : -1;
    int[] input = null;
    if (root.has("input")) {
      JsonNode in = root.get("input");
      if (!in.isArray()) {
        throw new IllegalArgumentException("model spec: 'input' must be an array of dimensions, e.g. [3, 224, 224]");
      }
      input = new int[in.size()];
      for (int k = 0; k < input.length; k++) {
        input[k] = intField(in.get(k), "model spec: input[" + k + "]");
      }
    }
    switch (name) {
      case "fashion_mnist_cnn" -> {
        if (classes != -1 && classes != 10 || input != null && !Arrays.equals(input, new int[] {1, 28, 28})) {
          throw new IllegalArgumentException("model spec: zoo model 'fashion_mnist_cnn' has input [1, 28, 28] and 10"
              + " classes; write its layers out to change them");
        }
        return ModelZoo.fashionMnistCnn(); // no batch norm: syncBatchNorm changes nothing
      }
      case "resnet18", "resnet50" -> {
        int c = classes == -1 ? 1000 : classes;
        int[] shape = input == null ? new int[] {3, 224, 224} : input;
        ModelSpec spec = name.equals("resnet18") ? ModelZoo.resnet18(c, shape) : ModelZoo.resnet50(c, shape);
        return syncBn ? spec.withSyncBatchNorm() : spec;
      }
      default -> throw new IllegalArgumentException("model spec: unknown zoo model " + z
          + " (known: fashion_mnist_cnn, resnet18, resnet50)");
    }
  }

  /** Parses an array of layer objects; {@code where} names the array, e.g. "model spec: layers". */
  private static List<LayerSpec> parseLayers(JsonNode ls, String where) {
    List<LayerSpec> out = new ArrayList<>();
    for (int k = 0; k < ls.size(); k++) {
      out.add(parseLayer(ls.get(k), where + "[" + k + "]"));
    }
    return out;
  }

  private static LayerSpec parseLayer(JsonNode l, String where) {
    if (!l.isObject() || !l.hasNonNull("type") || !l.get("type").isTextual()) {
      throw new IllegalArgumentException(where + ": expected an object with a string 'type'");
    }
    String type = l.get("type").asText();
    switch (type) {
      case "linear" -> {
        checkKeys(l, Set.of("type", "units", "bias"), where);
        JsonNode u = l.get("units");
        if (u == null) {
          throw new IllegalArgumentException(where + ": linear needs 'units'");
        }
        return new LayerSpec("linear", intField(u, where + ".units"), boolField(l, "bias", true, where), 0f);
      }
      case "dropout" -> {
        checkKeys(l, Set.of("type", "p"), where);
        JsonNode p = l.get("p");
        if (p == null || !p.isNumber()) {
          throw new IllegalArgumentException(where + ": dropout needs a number 'p' in [0, 1)");
        }
        return new LayerSpec("dropout", 0, false, (float) p.asDouble());
      }
      case "relu", "gelu", "flatten", "globalavgpool" -> {
        checkKeys(l, Set.of("type"), where);
        return new LayerSpec(type, 0, false, 0f);
      }
      case "conv2d" -> {
        checkKeys(l, Set.of("type", "filters", "kernel", "stride", "padding", "dilation", "groups", "bias", "init"),
            where);
        if (l.get("filters") == null) {
          throw new IllegalArgumentException(where + ": conv2d needs 'filters' (output channels)");
        }
        if (l.get("kernel") == null) {
          throw new IllegalArgumentException(where + ": conv2d needs 'kernel', e.g. 3 or [3, 3]");
        }
        int filters = intField(l.get("filters"), where + ".filters");
        int[] kernel = pairField(l, "kernel", null, where);
        int[] stride = pairField(l, "stride", new int[] {1, 1}, where);
        int[] pad = pairField(l, "padding", new int[] {0, 0}, where);
        int[] dil = pairField(l, "dilation", new int[] {1, 1}, where);
        int groups = l.has("groups") ? intField(l.get("groups"), where + ".groups") : 1;
        Conv2d.Init init = Conv2d.Init.UNIFORM;
        if (l.has("init")) {
          JsonNode i = l.get("init");
          if (i.isTextual() && i.asText().equals("kaiming_normal")) {
            init = Conv2d.Init.KAIMING_NORMAL;
          } else if (!i.isTextual() || !i.asText().equals("uniform")) {
            throw new IllegalArgumentException(where + ".init must be \"uniform\" or \"kaiming_normal\", got " + i);
          }
        }
        Conv c = new Conv(filters, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], dil[0], dil[1],
            groups, init);
        return new LayerSpec("conv2d", 0, boolField(l, "bias", true, where), 0f, c, null, null, null, null);
      }
      case "batchnorm2d" -> {
        checkKeys(l, Set.of("type", "momentum", "eps", "sync"), where);
        Norm n = new Norm(floatField(l, "momentum", Norm.DEFAULT.momentum(), where),
            floatField(l, "eps", Norm.DEFAULT.eps(), where), boolField(l, "sync", false, where));
        return new LayerSpec("batchnorm2d", 0, false, 0f, null, null, n, null, null);
      }
      case "maxpool2d", "avgpool2d" -> {
        checkKeys(l, Set.of("type", "kernel", "stride", "padding"), where);
        if (l.get("kernel") == null) {
          throw new IllegalArgumentException(where + ": " + type + " needs 'kernel', e.g. 2 or [2, 2]");
        }
        int[] kernel = pairField(l, "kernel", null, where);
        int[] stride = pairField(l, "stride", kernel, where);
        int[] pad = pairField(l, "padding", new int[] {0, 0}, where);
        Pool p = new Pool(kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1]);
        return new LayerSpec(type, 0, false, 0f, null, p, null, null, null);
      }
      case "residual" -> {
        checkKeys(l, Set.of("type", "layers", "shortcut"), where);
        JsonNode main = l.get("layers");
        if (main == null || !main.isArray()) {
          throw new IllegalArgumentException(where + ": residual needs 'layers', an array of layer objects (the "
              + "main path)");
        }
        JsonNode sc = l.get("shortcut");
        if (sc != null && !sc.isArray()) {
          throw new IllegalArgumentException(where + ".shortcut must be an array of layer objects ([] or absent: "
              + "identity)");
        }
        return new LayerSpec("residual", 0, false, 0f, null, null, null, parseLayers(main, where + ".layers"),
            sc == null ? List.of() : parseLayers(sc, where + ".shortcut"));
      }
      default -> throw new IllegalArgumentException(where + ": unknown layer type '" + type + "' (known: "
          + KNOWN_TYPES + ")");
    }
  }

  private static boolean boolField(JsonNode obj, String key, boolean dflt, String where) {
    if (!obj.has(key)) {
      return dflt;
    }
    if (!obj.get(key).isBoolean()) {
      throw new IllegalArgumentException(where + "." + key + " must be true or false");
    }
    return obj.get(key).asBoolean();
  }

  private static float floatField(JsonNode obj, String key, float dflt, String where) {
    if (!obj.has(key)) {
      return dflt;
    }
    JsonNode n = obj.get(key);
    if (!n.isNumber()) {
      throw new IllegalArgumentException(where + "." + key + " must be a number, got " + n);
    }
    return (float) n.asDouble();
  }

  /** An integer n (meaning [n, n]) or [height, width]; {@code dflt} when absent. */
  private static int[] pairField(JsonNode obj, String key, int[] dflt, String where) {
    JsonNode n = obj.get(key);
    if (n == null) {
      return dflt.clone();
    }
    String field = where + "." + key;
    if (n.isArray() && n.size() == 2) {
      return new int[] {intOf(n.get(0), field, n), intOf(n.get(1), field, n)};
    }
    int v = intOf(n, field, n);
    return new int[] {v, v};
  }

  private static int intOf(JsonNode n, String field, JsonNode whole) {
    if (n == null || !n.isIntegralNumber() || !n.canConvertToInt()) {
      throw new IllegalArgumentException(field + " must be an integer or [height, width], got " + whole);
    }
    return n.asInt();
  }

  private static int intField(JsonNode n, String where) {
    if (n == null || !n.isIntegralNumber() || !n.canConvertToInt()) {
      throw new IllegalArgumentException(where + " must be an integer, got " + n);
    }
    return n.asInt();
  }

  private static void checkKeys(JsonNode obj, Set<String> allowed, String where) {
    for (Iterator<String> it = obj.fieldNames(); it.hasNext(); ) {
      String k = it.next();
      if (!allowed.contains(k)) {
        throw new IllegalArgumentException(where + ": unknown key '" + k + "' (allowed: " + new TreeSet<>(allowed)
            + ")");
      }
    }
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof ModelSpec m && toJson().equals(m.toJson());
  }

  @Override
  public int hashCode() {
    return toJson().hashCode();
  }

  @Override
  public String toString() {
    return toJson();
  }
}
