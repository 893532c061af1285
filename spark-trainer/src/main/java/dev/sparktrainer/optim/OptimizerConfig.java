package dev.sparktrainer.optim;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import java.io.IOException;
import java.io.Serializable;
import java.util.Iterator;
import java.util.Set;

/**
 * Which optimizer and its hyper-parameters, immutable. {@code OptimizerConfig.adamw(1e-3).withWeightDecay(0.01)}
 * or JSON {@code {"type": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": true, "weightDecay": 1e-4}}.
 * Defaults follow PyTorch: SGD momentum 0, AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
 */
public final class OptimizerConfig implements Serializable {
  private static final long serialVersionUID = 1L;
  private static final ObjectMapper JSON = new ObjectMapper();

  /** Optimizer family. */
  public enum Type { SGD, ADAMW }

  private final Type type;
  private final double lr;
  private final double momentum;
  private final boolean nesterov;
  private final double weightDecay;
  private final double beta1;
  private final double beta2;
  private final double eps;

  private OptimizerConfig(Type type, double lr, double momentum, boolean nesterov, double weightDecay,
      double beta1, double beta2, double eps) {
    this.type = type;
    this.lr = lr;
    this.momentum = momentum;
    this.nesterov = nesterov;
    this.weightDecay = weightDecay;
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.eps = eps;
    validate();
  }

  private void validate() {
    if (!(lr > 0) || !Double.isFinite(lr)) {
      throw new IllegalArgumentException("optimizer: lr must be a finite number > 0, got " + lr);
    }
    if (!(momentum >= 0 && momentum < 1)) {
      throw new IllegalArgumentException("optimizer: momentum must be in [0, 1), got " + momentum);
    }
    if (nesterov && momentum == 0) {
      throw new IllegalArgumentException("optimizer: nesterov needs momentum > 0 (set momentum, e.g. 0.9)");
    }
    if (!(weightDecay >= 0) || !Double.isFinite(weightDecay)) {
      throw new IllegalArgumentException("optimizer: weightDecay must be >= 0, got " + weightDecay);
    }
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1)) {
      throw new IllegalArgumentException("optimizer: betas must be in [0, 1), got (" + beta1 + ", " + beta2 + ")");
    }
    if (!(eps > 0)) {
      throw new IllegalArgumentException("optimizer: eps must be > 0, got " + eps);
    }
  }

  public static OptimizerConfig sgd(double lr) {
    return new OptimizerConfig(Type.SGD, lr, 0, false, 0, 0.9, 0.999, 1e-8);
  }

  public static OptimizerConfig adamw(double lr) {
    return new OptimizerConfig(Type.ADAMW, lr, 0, false, 0.01, 0.9, 0.999, 1e-8);
  }

  public OptimizerConfig withMomentum(double m) {
    return new OptimizerConfig(type, lr, m, nesterov, weightDecay, beta1, beta2, eps);
  }

  public OptimizerConfig withNesterov(boolean n) {
    return new OptimizerConfig(type, lr, momentum, n, weightDecay, beta1, beta2, eps);
  }

  public OptimizerConfig withWeightDecay(double wd) {
    return new OptimizerConfig(type, lr, momentum, nesterov, wd, beta1, beta2, eps);
  }

  public OptimizerConfig withBetas(double b1, double b2) {
    return new OptimizerConfig(type, lr, momentum, nesterov, weightDecay, b1, b2, eps);
  }

  public OptimizerConfig withEps(double e) {
    return new OptimizerConfig(type, lr, momentum, nesterov, weightDecay, beta1, beta2, e);
  }

  public OptimizerConfig withLr(double newLr) {
    return new OptimizerConfig(type, newLr, momentum, nesterov, weightDecay, beta1, beta2, eps);
  }

  public Type type() {
    return type;
  }

  public double lr() {
    return lr;
  }

  public double momentum() {
    return momentum;
  }

  public boolean nesterov() {
    return nesterov;
  }

  public double weightDecay() {
    return weightDecay;
  }

  public double beta1() {
    return beta1;
  }

  public double beta2() {
    return beta2;
  }

  public double eps() {
    return eps;
  }

  /** Builds the optimizer over a model's flat buffers. */
  public Optimizer create(Device device, ParameterSet params) {
    return new Optimizer(this, device, params);
  }

  public ObjectNode toJsonNode() {
    ObjectNode o = JSON.createObjectNode();
    o.put("type", type.name().toLowerCase(java.util.Locale.ROOT));
    o.put("lr", lr);
    o.put("weightDecay", weightDecay);
    if (type == Type.SGD) {
      o.put("momentum", momentum);
      o.put("nesterov", nesterov);
    } else {
      o.putArray("betas").add(beta1).add(beta2);
      o.put("eps", eps);
    }
    return o;
  }

  public String toJson() {
    return toJsonNode().toString();
  }

  public static OptimizerConfig fromJson(String json) {
    try {
      return fromJsonNode(JSON.readTree(json));
    } catch (IOException e) {
      throw new IllegalArgumentException("optimizer: not valid JSON: " + e.getMessage(), e);
    }
  }

  /** Parses and validates; unknown keys and wrong types are errors naming the key. */
  public static OptimizerConfig fromJsonNode(JsonNode n) {
    if (n == null || !n.isObject() || !n.hasNonNull("type")) {
      throw new IllegalArgumentException("optimizer: expected an object with 'type' (sgd or adamw)");
    }
    String t = n.get("type").asText();
    String lower = t.toLowerCase(java.util.Locale.ROOT);
    Set<String> allowed = switch (lower) {
      case "sgd" -> Set.of("type", "lr", "momentum", "nesterov", "weightDecay");
      case "adamw" -> Set.of("type", "lr", "betas", "eps", "weightDecay");
      default -> throw new IllegalArgumentException("optimizer: unknown type '" + t + "' (use sgd or adamw)");
    };
    // Keys first, so a misspelt key is reported as such rather than as a validation error it causes.
    for (Iterator<String> it = n.fieldNames(); it.hasNext(); ) {
      String k = it.next();
      if (!allowed.contains(k)) {
        throw new IllegalArgumentException("optimizer: unknown key '" + k + "' for " + t + " (allowed: "
            + new java.util.TreeSet<>(allowed) + ")");
      }
    }
    OptimizerConfig c;
    if (lower.equals("sgd")) {
      c = sgd(JsonFields.number(n, "optimizer", "lr", 0.01));
      c = c.withMomentum(JsonFields.number(n, "optimizer", "momentum", 0))
          .withWeightDecay(JsonFields.number(n, "optimizer", "weightDecay", 0));
      if (n.has("nesterov")) {
        if (!n.get("nesterov").isBoolean()) {
          throw new IllegalArgumentException("optimizer.nesterov must be true or false");
        }
        c = c.withNesterov(n.get("nesterov").asBoolean());
      }
    } else {
      c = adamw(JsonFields.number(n, "optimizer", "lr", 1e-3))
          .withWeightDecay(JsonFields.number(n, "optimizer", "weightDecay", 0.01))
          .withEps(JsonFields.number(n, "optimizer", "eps", 1e-8));
      if (n.has("betas")) {
        JsonNode b = n.get("betas");
        if (!b.isArray() || b.size() != 2 || !b.get(0).isNumber() || !b.get(1).isNumber()) {
          throw new IllegalArgumentException("optimizer.betas must be two numbers, e.g. [0.9, 0.999]");
        }
        c = c.withBetas(b.get(0).asDouble(), b.get(1).asDouble());
      }
    }
    return c;
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof OptimizerConfig c && toJson().equals(c.toJson());
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
