package dev.sparktrainer.optim;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.Serializable;
import java.util.Iterator;
import java.util.Set;

/**
 * Learning rate as a function of the optimizer step (0-based): constant; step decay (lr * gamma^(t / stepSize));
 * linear warmup then cosine decay to minLr over totalSteps (totalSteps 0 = the whole run, filled in by the
 * trainer). JSON: {@code {"type": "cosine", "warmupSteps": 100, "minLr": 0}}.
 */
public final class LrSchedule implements Serializable {
  private static final long serialVersionUID = 1L;
  private static final ObjectMapper JSON = new ObjectMapper();

  /** Schedule family. */
  public enum Type { CONSTANT, STEP, COSINE }

  private final Type type;
  private final long stepSize;
  private final double gamma;
  private final long warmupSteps;
  private final long totalSteps;
  private final double minLr;

  private LrSchedule(Type type, long stepSize, double gamma, long warmupSteps, long totalSteps, double minLr) {
    if (type == Type.STEP && stepSize <= 0) {
      throw new IllegalArgumentException("schedule: step needs stepSize > 0, got " + stepSize);
    }
    if (!(gamma > 0) || warmupSteps < 0 || totalSteps < 0 || !(minLr >= 0)) {
      throw new IllegalArgumentException("schedule: gamma must be > 0, warmupSteps/totalSteps/minLr >= 0");
    }
    this.type = type;
    this.stepSize = stepSize;
    this.gamma = gamma;
    this.warmupSteps = warmupSteps;
    this.totalSteps = totalSteps;
    this.minLr = minLr;
  }

  public static LrSchedule constant() {
    return new LrSchedule(Type.CONSTANT, 1, 1, 0, 0, 0);
  }

  public static LrSchedule step(long stepSize, double gamma) {
    return new LrSchedule(Type.STEP, stepSize, gamma, 0, 0, 0);
  }

  /** Linear warmup for warmupSteps, then cosine to minLr at totalSteps (0: the run's total). */
  public static LrSchedule warmupCosine(long warmupSteps, long totalSteps, double minLr) {
    return new LrSchedule(Type.COSINE, 1, 1, warmupSteps, totalSteps, minLr);
  }

  /** This schedule with totalSteps filled in when it was left 0. */
  public LrSchedule withDefaultTotal(long runTotal) {
    if (type != Type.COSINE || totalSteps != 0) {
      return this;
    }
    return new LrSchedule(type, stepSize, gamma, warmupSteps, runTotal, minLr);
  }

  public Type type() {
    return type;
  }

  /** The learning rate at optimizer step t (0-based). */
  public double lr(double baseLr, long t) {
    switch (type) {
      case CONSTANT:
        return baseLr;
      case STEP:
        return baseLr * Math.pow(gamma, t / stepSize);
      default:
        if (t < warmupSteps) {
          return baseLr * (t + 1) / (double) warmupSteps;
        }
        long decay = Math.max(1, totalSteps - warmupSteps);
        double progress = Math.min(1.0, (t - warmupSteps) / (double) decay);
        return minLr + (baseLr - minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
    }
  }

  public ObjectNode toJsonNode() {
    ObjectNode o = JSON.createObjectNode();
    o.put("type", type.name().toLowerCase(java.util.Locale.ROOT));
    switch (type) {
      case STEP -> {
        o.put("stepSize", stepSize);
        o.put("gamma", gamma);
      }
      case COSINE -> {
        o.put("warmupSteps", warmupSteps);
        o.put("totalSteps", totalSteps);
        o.put("minLr", minLr);
      }
      default -> { }
    }
    return o;
  }

  public String toJson() {
    return toJsonNode().toString();
  }

  public static LrSchedule fromJson(String json) {
    try {
      return fromJsonNode(JSON.readTree(json));
    } catch (IOException e) {
      throw new IllegalArgumentException("schedule: not valid JSON: " + e.getMessage(), e);
    }
  }

  public static LrSchedule fromJsonNode(JsonNode n) {
    if (n == null || !n.isObject() || !n.hasNonNull("type")) {
      throw new IllegalArgumentException("schedule: expected an object with 'type' (constant, step or cosine)");
    }
    String t = n.get("type").asText();
    String lower = t.toLowerCase(java.util.Locale.ROOT);
    Set<String> allowed = switch (lower) {
      case "constant" -> Set.of("type");
      case "step" -> Set.of("type", "stepSize", "gamma");
      case "cosine" -> Set.of("type", "warmupSteps", "totalSteps", "minLr");
      default -> throw new IllegalArgumentException("schedule: unknown type '" + t + "' (use constant, step or cosine)");
    };
    // Keys first, so a misspelt key is reported as such rather than as its default failing validation.
    for (Iterator<String> it = n.fieldNames(); it.hasNext(); ) {
      String k = it.next();
      if (!allowed.contains(k)) {
        throw new IllegalArgumentException("schedule: unknown key '" + k + "' for " + t + " (allowed: "
            + new java.util.TreeSet<>(allowed) + ")");
      }
    }
    LrSchedule s = switch (lower) {
      case "step" -> step(JsonFields.integer(n, "schedule", "stepSize", 0),
          JsonFields.number(n, "schedule", "gamma", 0.1));
      case "cosine" -> warmupCosine(JsonFields.integer(n, "schedule", "warmupSteps", 0),
          JsonFields.integer(n, "schedule", "totalSteps", 0), JsonFields.number(n, "schedule", "minLr", 0));
      default -> constant();
    };
    return s;
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof LrSchedule s && toJson().equals(s.toJson());
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
