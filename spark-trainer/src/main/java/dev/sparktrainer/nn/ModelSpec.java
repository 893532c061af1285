package dev.sparktrainer.nn;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
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
 * Layer types: linear (units, bias = true), relu, gelu, dropout (p), flatten. Validation happens when the
 * spec is built or parsed, with a message naming the bad field.
 */
public final class ModelSpec implements Serializable {
  private static final long serialVersionUID = 1L;
  private static final ObjectMapper JSON = new ObjectMapper();

  /** One layer: its type and parameters (units for linear, p for dropout). */
  public record LayerSpec(String type, int units, boolean bias, float p) implements Serializable {}

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

  /** Fresh, unbound layer objects for this spec. */
  public List<Layer> newLayers() {
    List<Layer> out = new ArrayList<>();
    for (int k = 0; k < layers.size(); k++) {
      LayerSpec l = layers.get(k);
      String type = l.type() == null ? "" : l.type();
      try {
        switch (type) {
          case "linear" -> out.add(new Linear(l.units(), l.bias()));
          case "relu" -> out.add(new Activation(Activation.Kind.RELU));
          case "gelu" -> out.add(new Activation(Activation.Kind.GELU));
          case "dropout" -> out.add(new Dropout(l.p()));
          case "flatten" -> out.add(new Flatten());
          default -> throw new IllegalArgumentException("unknown layer type '" + type
              + "' (known: linear, relu, gelu, dropout, flatten)");
        }
      } catch (IllegalArgumentException e) {
        throw new IllegalArgumentException("model spec: layer " + k + ": " + e.getMessage(), e);
      }
    }
    return out;
  }

  // ---- JSON ----

  /** The spec as a JSON tree (the form stored in checkpoints and Params). */
  public ObjectNode toJsonNode() {
    ObjectNode root = JSON.createObjectNode();
    ArrayNode in = root.putArray("input");
    for (int d : input) {
      in.add(d);
    }
    ArrayNode arr = root.putArray("layers");
    for (LayerSpec l : layers) {
      ObjectNode o = arr.addObject();
      o.put("type", l.type());
      switch (l.type()) {
        case "linear" -> {
          o.put("units", l.units());
          o.put("bias", l.bias());
        }
        case "dropout" -> o.put("p", l.p());
        default -> { }
      }
    }
    return root;
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
    for (int k = 0; k < ls.size(); k++) {
      JsonNode l = ls.get(k);
      String where = "model spec: layers[" + k + "]";
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
          boolean bias = true;
          if (l.has("bias")) {
            if (!l.get("bias").isBoolean()) {
              throw new IllegalArgumentException(where + ".bias must be true or false");
            }
            bias = l.get("bias").asBoolean();
          }
          b.linear(intField(u, where + ".units"), bias);
        }
        case "dropout" -> {
          checkKeys(l, Set.of("type", "p"), where);
          JsonNode p = l.get("p");
          if (p == null || !p.isNumber()) {
            throw new IllegalArgumentException(where + ": dropout needs a number 'p' in [0, 1)");
          }
          b.dropout((float) p.asDouble());
        }
        case "relu", "gelu", "flatten" -> {
          checkKeys(l, Set.of("type"), where);
          b.layer(new LayerSpec(type, 0, false, 0f));
        }
        default -> throw new IllegalArgumentException(where + ": unknown layer type '" + type
            + "' (known: linear, relu, gelu, dropout, flatten)");
      }
    }
    return b.build();
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
