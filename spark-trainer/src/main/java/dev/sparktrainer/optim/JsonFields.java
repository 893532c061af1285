package dev.sparktrainer.optim;

import com.fasterxml.jackson.databind.JsonNode;

/** Typed reads of optional JSON fields with errors that name the field, e.g. "schedule.gamma must be a number". */
final class JsonFields {
  private JsonFields() {}

  static double number(JsonNode n, String prefix, String key, double dflt) {
    JsonNode v = n.get(key);
    if (v == null) {
      return dflt;
    }
    if (!v.isNumber()) {
      throw new IllegalArgumentException(prefix + "." + key + " must be a number, got " + v);
    }
    return v.asDouble();
  }

  static long integer(JsonNode n, String prefix, String key, long dflt) {
    JsonNode v = n.get(key);
    if (v == null) {
      return dflt;
    }
    if (!v.isIntegralNumber()) {
      throw new IllegalArgumentException(prefix + "." + key + " must be an integer, got " + v);
    }
    return v.asLong();
  }
}
