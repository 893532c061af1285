package dev.sparktrainer.checkpoint;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * One checkpoint on the host, immutable: the training position (step, epoch), the model spec and optimizer
 * JSON, a free {@code extra} object for the trainer, and the named tensors in file order.
 *
 * <p>Made by {@link Checkpoints#capture} or {@link CheckpointIO#read}; consumed by {@link Checkpoints#restore}
 * and {@link CheckpointIO#write}. JSON values are stored in canonical form (what a write and read gives
 * back) and handed out as copies, so two equal checkpoints compare equal whichever way they were made.
 */
public final class CheckpointData {
  private final long step;
  private final int epoch;
  private final ObjectNode modelSpec;
  private final ObjectNode optimizer;
  private final ObjectNode extra;
  private final Map<String, TensorData> tensors; // unmodifiable, insertion (file) order

  private CheckpointData(long step, int epoch, ObjectNode modelSpec, ObjectNode optimizer, ObjectNode extra,
      Map<String, TensorData> tensors) {
    this.step = step;
    this.epoch = epoch;
    this.modelSpec = modelSpec;
    this.optimizer = optimizer;
    this.extra = extra;
    this.tensors = Collections.unmodifiableMap(new LinkedHashMap<>(tensors));
  }

  /**
   * For the reader: parts it has validated itself (the JSON objects freshly parsed, so already canonical and
   * owned by nobody else; names unique; optimizer.steps an integer >= 0).
   */
  static CheckpointData ofValidated(long step, int epoch, ObjectNode modelSpec, ObjectNode optimizer,
      ObjectNode extra, Map<String, TensorData> tensors) {
    return new CheckpointData(step, epoch, modelSpec, optimizer, extra, tensors);
  }

  /** Starts an empty checkpoint; {@code modelSpec} and {@code optimizer} are required. */
  public static Builder builder() {
    return new Builder();
  }

  /** Collects the parts; {@link #build()} validates them. */
  public static final class Builder {
    private long step;
    private int epoch;
    private ObjectNode modelSpec;
    private ObjectNode optimizer;
    private ObjectNode extra = CheckpointFormat.JSON.createObjectNode();
    private final LinkedHashMap<String, TensorData> tensors = new LinkedHashMap<>();

    private Builder() {}

    /** Training steps done (>= 0). */
    public Builder step(long step) {
      if (step < 0) {
        throw new IllegalArgumentException("checkpoint step must be >= 0, got " + step);
      }
      this.step = step;
      return this;
    }

    /** Current epoch (>= 0). */
    public Builder epoch(int epoch) {
      if (epoch < 0) {
        throw new IllegalArgumentException("checkpoint epoch must be >= 0, got " + epoch);
      }
      this.epoch = epoch;
      return this;
    }

    /** The model spec as JSON (required; a JSON object, see {@code ModelSpec.toJsonNode()}). */
    public Builder modelSpec(JsonNode spec) {
      this.modelSpec = canonicalObject(spec, "modelSpec");
      return this;
    }

    /**
     * The optimizer as JSON (required): the {@code OptimizerConfig} JSON plus {@code "steps"}, an integer
     * >= 0.
     */
    public Builder optimizer(JsonNode optimizerJson) {
      ObjectNode o = canonicalObject(optimizerJson, "optimizer");
      JsonNode s = o.get("steps");
      if (s == null || !s.isIntegralNumber() || !s.canConvertToLong() || s.longValue() < 0) {
        throw new IllegalArgumentException("checkpoint optimizer JSON needs \"steps\", an integer >= 0, got "
            + s);
      }
      this.optimizer = o;
      return this;
    }

    /** Free JSON object for the trainer (sampler position, seeds, schedule...); null means {}. */
    public Builder extra(JsonNode extraJson) {
      this.extra = extraJson == null ? CheckpointFormat.JSON.createObjectNode()
          : canonicalObject(extraJson, "extra");
      return this;
    }

    /** Adds a tensor after the ones added before; names must be unique and non-empty. */
    public Builder tensor(String name, TensorData data) {
      if (name == null || name.isEmpty()) {
        throw new IllegalArgumentException("checkpoint tensor names must be non-empty");
      }
      Objects.requireNonNull(data, "tensor data");
      if (tensors.putIfAbsent(name, data) != null) {
        throw new IllegalArgumentException("duplicate checkpoint tensor name '" + name + "'");
      }
      return this;
    }

    /** Checks that the required parts are set and builds. */
    public CheckpointData build() {
      if (modelSpec == null) {
        throw new IllegalArgumentException("checkpoint needs a modelSpec (ModelSpec.toJsonNode())");
      }
      if (optimizer == null) {
        throw new IllegalArgumentException("checkpoint needs the optimizer JSON (config plus \"steps\")");
      }
      return new CheckpointData(step, epoch, modelSpec, optimizer, extra, tensors);
    }
  }

  private static ObjectNode canonicalObject(JsonNode n, String what) {
    if (n == null || !n.isObject()) {
      throw new IllegalArgumentException("checkpoint " + what + " must be a JSON object, got "
          + (n == null ? "null" : n.getNodeType()));
    }
    try {
      // A write + read round trip: FloatNode becomes DoubleNode and so on, as after reading a file.
      return (ObjectNode) CheckpointFormat.JSON.readTree(CheckpointFormat.JSON.writeValueAsBytes(n));
    } catch (java.io.IOException e) {
      throw new IllegalArgumentException("checkpoint " + what + " cannot be stored as JSON: " + e.getMessage(), e);
    }
  }

  public long step() {
    return step;
  }

  public int epoch() {
    return epoch;
  }

  /** A copy of the model spec JSON. */
  public ObjectNode modelSpec() {
    return modelSpec.deepCopy();
  }

  /** A copy of the optimizer JSON (config plus "steps"). */
  public ObjectNode optimizer() {
    return optimizer.deepCopy();
  }

  /** The optimizer's step counter ({@code optimizer.steps}). */
  public long optimizerSteps() {
    return optimizer.get("steps").longValue();
  }

  /** A copy of the trainer's extra JSON. */
  public ObjectNode extra() {
    return extra.deepCopy();
  }

  /** Name -> tensor, unmodifiable, in file order. */
  public Map<String, TensorData> tensors() {
    return tensors;
  }

  /** The tensor called {@code name}, or null. */
  public TensorData tensor(String name) {
    return tensors.get(name);
  }

  /** Size of the data section these tensors make (sum of their bytes). */
  public long dataBytes() {
    long n = 0;
    for (TensorData t : tensors.values()) {
      n += t.byteSize();
    }
    return n;
  }

  /** Same position, JSON, tensor names in the same order and bitwise-equal tensors. */
  @Override
  public boolean equals(Object o) {
    if (!(o instanceof CheckpointData c)) {
      return false;
    }
    return step == c.step && epoch == c.epoch && modelSpec.equals(c.modelSpec)
        && optimizer.equals(c.optimizer) && extra.equals(c.extra)
        && new ArrayList<>(tensors.keySet()).equals(new ArrayList<>(c.tensors.keySet()))
        && tensors.equals(c.tensors);
  }

  @Override
  public int hashCode() {
    return Objects.hash(step, epoch, modelSpec, optimizer, extra, List.copyOf(tensors.keySet()), tensors);
  }

  @Override
  public String toString() {
    return "CheckpointData{step=" + step + ", epoch=" + epoch + ", tensors=" + tensors.size() + ", dataBytes="
        + dataBytes() + "}";
  }
}
